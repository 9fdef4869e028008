// The ledger backend over SQLite, for one build host: WAL + busy timeout + BEGIN IMMEDIATE so that several
// luksforge processes can record and reserve at the same time without ever exceeding a limit.
#include "ledger/backend.hpp"

#include <sqlite3.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>
#include <iterator>
#include <utility>

namespace luksforge::detail {
namespace {

constexpr int busy_timeout_ms = 30000;

struct DbDeleter {
    void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbDeleter>;

[[noreturn]] void throw_sqlite(sqlite3* db, int rc, const std::string& what) {
    std::string message = what + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    int primary = rc & 0xff;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) throw BusyError(message);
    if (primary == SQLITE_CANTOPEN) throw Error(EACCES, message);
    if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT) throw FormatError(message);
    throw Error(EIO, message);
}

// One prepared statement.
class Statement {
public:
    Statement(sqlite3* db, const char* sql) : db_(db) {
        int rc = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
        if (rc != SQLITE_OK) throw_sqlite(db, rc, "ledger query");
    }
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;
    ~Statement() noexcept { sqlite3_finalize(stmt_); }

    Statement& bind(int index, const std::string& text) {
        check(sqlite3_bind_text(stmt_, index, text.c_str(), static_cast<int>(text.size()), SQLITE_TRANSIENT));
        return *this;
    }
    Statement& bind(int index, std::int64_t value) {
        check(sqlite3_bind_int64(stmt_, index, value));
        return *this;
    }
    // True while a row is available.
    bool step() {
        int rc = sqlite3_step(stmt_);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        throw_sqlite(db_, rc, "ledger");
    }
    std::int64_t integer(int column) const { return sqlite3_column_int64(stmt_, column); }
    sqlite3_stmt* native() const noexcept { return stmt_; }
    std::string text(int column) const {
        const unsigned char* value = sqlite3_column_text(stmt_, column);
        return value ? std::string(reinterpret_cast<const char*>(value),
                                   static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)))
                     : std::string();
    }

private:
    void check(int rc) {
        if (rc != SQLITE_OK) throw_sqlite(db_, rc, "ledger bind");
    }
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

void exec(sqlite3* db, const char* sql, const char* what) {
    char* error = nullptr;
    int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
    if (rc != SQLITE_OK) {
        std::string message = std::string(what) + ": " + (error ? error : sqlite3_errstr(rc));
        sqlite3_free(error);
        if ((rc & 0xff) == SQLITE_BUSY) throw BusyError(message);
        throw Error(EIO, message);
    }
}

// BEGIN IMMEDIATE takes the write lock up front, so a count followed by an insert cannot interleave with
// another writer's. Rolls back unless committed.
class WriteTransaction {
public:
    explicit WriteTransaction(sqlite3* db) : db_(db) { exec(db_, "BEGIN IMMEDIATE", "ledger transaction"); }
    WriteTransaction(const WriteTransaction&) = delete;
    WriteTransaction& operator=(const WriteTransaction&) = delete;
    ~WriteTransaction() noexcept {
        if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    void commit() {
        exec(db_, "COMMIT", "ledger commit");
        done_ = true;
    }

private:
    sqlite3* db_;
    bool done_ = false;
};

// The versions' schemas; migrations[v - 1] takes a ledger from version v - 1 to v.
constexpr const char* migrations[] = {
    // 1: the instances table (ledgers from before the version table are at 1).
    R"sql(
CREATE TABLE IF NOT EXISTS instances (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    image       TEXT NOT NULL,
    uuid        TEXT NOT NULL DEFAULT '',
    time        TEXT NOT NULL,
    policy_path TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT '',
    event       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_fingerprint ON instances(fingerprint);
)sql",
    // 2: reservations with a lease, and the limit they were made under.
    R"sql(
ALTER TABLE instances ADD COLUMN state TEXT NOT NULL DEFAULT 'committed';
ALTER TABLE instances ADD COLUMN lease_expires INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN max_instances INTEGER NOT NULL DEFAULT 0;
)sql",
    // 3: the host that made a record (records from before it have ''), so a host prunes only its own.
    R"sql(
ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
)sql",
};
static_assert(std::size(migrations) == kLedgerSchemaVersion);

// The database's clock, in Unix seconds.
#define LEDGER_NOW "CAST(strftime('%s','now') AS INTEGER)"
// An instance counts while committed or while its reservation's lease lasts.
#define LEDGER_LIVE "(state = 'committed' OR lease_expires > " LEDGER_NOW ")"

int read_version(sqlite3* db) {
    exec(db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", "ledger schema version");
    Statement version(db, "SELECT MAX(version) FROM schema_version");
    version.step();
    if (sqlite3_column_type(version.native(), 0) != SQLITE_NULL) return static_cast<int>(version.integer(0));
    Statement table(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'instances'");
    return table.step() ? 1 : 0;
}

// Under the write lock, so two processes opening a new ledger do not both migrate it.
void migrate(sqlite3* db, const std::string& where) {
    WriteTransaction transaction(db);
    const int version = read_version(db);
    if (version > kLedgerSchemaVersion)
        throw FormatError("ledger " + where + " has schema version " + std::to_string(version) +
                          ", newer than this luksforge's " + std::to_string(kLedgerSchemaVersion));
    for (int next = version + 1; next <= kLedgerSchemaVersion; ++next)
        exec(db, migrations[next - 1], "ledger schema migration");
    if (version != kLedgerSchemaVersion) {
        exec(db, "DELETE FROM schema_version", "ledger schema version");
        Statement set(db, "INSERT INTO schema_version (version) VALUES (?1)");
        set.bind(1, static_cast<std::int64_t>(kLedgerSchemaVersion));
        set.step();
    }
    transaction.commit();
}

std::uint64_t count_live(sqlite3* db, const std::string& fingerprint) {
    Statement count(db, "SELECT COUNT(DISTINCT image) FROM instances WHERE fingerprint = ?1 AND " LEDGER_LIVE);
    count.bind(1, fingerprint);
    count.step();
    return static_cast<std::uint64_t>(count.integer(0));
}

bool live_image(sqlite3* db, const std::string& fingerprint, const std::string& image) {
    Statement query(db, "SELECT 1 FROM instances WHERE fingerprint = ?1 AND image = ?2 AND " LEDGER_LIVE " LIMIT 1");
    query.bind(1, fingerprint).bind(2, image);
    return query.step();
}

std::int64_t insert(sqlite3* db, LedgerRecord& record, bool reserved, std::int64_t lease_seconds,
                    std::uint64_t max_instances) {
    require_complete(record);
    Statement insert(db,
                     "INSERT INTO instances (fingerprint, image, uuid, time, policy_path, policy_hash, event, state, "
                     "lease_expires, max_instances, host) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, " LEDGER_NOW " + ?9, ?10, ?11)");
    insert.bind(1, record.fingerprint).bind(2, record.image).bind(3, record.uuid).bind(4, record.time);
    insert.bind(5, record.policy_path).bind(6, record.policy_hash).bind(7, record.event);
    insert.bind(8, std::string(reserved ? "reserved" : "committed"));
    insert.bind(9, reserved ? lease_seconds : std::int64_t{0});
    insert.bind(10, static_cast<std::int64_t>(max_instances));
    insert.bind(11, record.host);
    insert.step();
    record.id = sqlite3_last_insert_rowid(db);
    return record.id;
}

class SqliteBackend final : public LedgerBackend {
public:
    SqliteBackend(DbPtr db, std::filesystem::path path) : db_(std::move(db)), path_(std::move(path)) {}

    sqlite3* sqlite_handle() const noexcept override { return db_.get(); }

    int schema_version() override { return read_version(db_.get()); }

    std::int64_t record(LedgerRecord& record) override {
        WriteTransaction transaction(db_.get());
        std::int64_t id = insert(db_.get(), record, false, 0, 0);
        transaction.commit();
        return id;
    }

    std::int64_t reserve(LedgerRecord& record, std::uint64_t max_instances, std::int64_t lease_seconds) override {
        WriteTransaction transaction(db_.get());
        const std::uint64_t count = count_live(db_.get(), record.fingerprint);
        if (!live_image(db_.get(), record.fingerprint, record.image) && count + 1 > max_instances)
            throw_limit(record, count, max_instances, path_.string());
        std::int64_t id = insert(db_.get(), record, true, lease_seconds, max_instances);
        transaction.commit();
        return id;
    }

    void commit(std::int64_t id) override {
        WriteTransaction transaction(db_.get());
        Statement row(db_.get(),
                      "SELECT fingerprint, image, state, lease_expires > " LEDGER_NOW ", max_instances "
                      "FROM instances WHERE id = ?1");
        row.bind(1, id);
        if (!row.step())
            throw NotFoundError("reservation " + std::to_string(id) + " is not in the ledger " + path_.string());
        LedgerRecord record;
        record.fingerprint = row.text(0);
        record.image = row.text(1);
        if (row.text(2) == "committed") return;
        if (row.integer(3) == 0) {
            // The lease ran out: others may have taken the slot since.
            const std::uint64_t max_instances = static_cast<std::uint64_t>(row.integer(4));
            const std::uint64_t count = count_live(db_.get(), record.fingerprint);
            if (!live_image(db_.get(), record.fingerprint, record.image) && count + 1 > max_instances) {
                Statement remove(db_.get(), "DELETE FROM instances WHERE id = ?1");
                remove.bind(1, id);
                remove.step();
                transaction.commit();
                throw_limit(record, count, max_instances, path_.string() + " (the reservation's lease ran out)");
            }
        }
        Statement update(db_.get(), "UPDATE instances SET state = 'committed' WHERE id = ?1");
        update.bind(1, id);
        update.step();
        transaction.commit();
    }

    void release(std::int64_t id) override {
        WriteTransaction transaction(db_.get());
        Statement remove(db_.get(), "DELETE FROM instances WHERE id = ?1");
        remove.bind(1, id);
        remove.step();
        transaction.commit();
    }

    std::uint64_t count_instances(const std::string& fingerprint) override { return count_live(db_.get(), fingerprint); }

    std::vector<LedgerRecord> records(const std::optional<std::string>& fingerprint) override {
#define LEDGER_COLUMNS                                                                                           \
    "SELECT id, fingerprint, image, uuid, time, policy_path, policy_hash, event, CASE WHEN state = 'committed' " \
    "THEN 'committed' WHEN lease_expires > " LEDGER_NOW " THEN 'reserved' ELSE 'expired' END, lease_expires, "    \
    "max_instances, host FROM instances "
        Statement query(db_.get(), fingerprint ? LEDGER_COLUMNS "WHERE fingerprint = ?1 ORDER BY id"
                                               : LEDGER_COLUMNS "ORDER BY id");
#undef LEDGER_COLUMNS
        if (fingerprint) query.bind(1, *fingerprint);
        std::vector<LedgerRecord> result;
        while (query.step()) {
            LedgerRecord r;
            r.id = query.integer(0);
            r.fingerprint = query.text(1);
            r.image = query.text(2);
            r.uuid = query.text(3);
            r.time = query.text(4);
            r.policy_path = query.text(5);
            r.policy_hash = query.text(6);
            r.event = query.text(7);
            r.state = query.text(8);
            r.lease_expires = query.integer(9);
            r.max_instances = static_cast<std::uint64_t>(query.integer(10));
            r.host = query.text(11);
            result.push_back(std::move(r));
        }
        return result;
    }

private:
    DbPtr db_;
    std::filesystem::path path_;
};

}  // namespace

std::unique_ptr<LedgerBackend> open_sqlite_backend(const std::filesystem::path& path) {
    std::filesystem::path directory = path.parent_path();
    if (!directory.empty() && !std::filesystem::exists(directory)) {
        std::error_code ec;
        std::filesystem::create_directories(directory, ec);
        if (ec) throw Error(ec.value(), "cannot create ledger directory " + directory.string() + ": " + ec.message());
        // The ledger names every image and key fingerprint: keep it to its owner.
        ::chmod(directory.c_str(), 0700);
    }
    // Create the file ourselves so it is 0600 from the first byte; SQLite gives its -wal and -shm files the
    // database file's mode.
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw Error(errno, "cannot open ledger " + path.string() + ": " + std::strerror(errno));
    ::close(fd);

    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr);
    DbPtr db(raw);
    if (rc != SQLITE_OK) throw_sqlite(raw, rc, "cannot open ledger " + path.string());
    sqlite3_busy_timeout(db.get(), busy_timeout_ms);
    exec(db.get(), "PRAGMA journal_mode=WAL", "ledger journal mode");
    exec(db.get(), "PRAGMA synchronous=FULL", "ledger synchronous mode");
    migrate(db.get(), path.string());
    return std::make_unique<SqliteBackend>(std::move(db), path);
}

}  // namespace luksforge::detail
