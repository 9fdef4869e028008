// The key ledger over SQLite: WAL + busy timeout + BEGIN IMMEDIATE so that several luksforge processes can
// record and reserve at the same time without ever exceeding a limit.
#include <luksforge/ledger.hpp>

#include <sqlite3.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

namespace luksforge {
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

constexpr const char* schema = R"sql(
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
)sql";

std::uint64_t count_in(sqlite3* db, const std::string& fingerprint) {
    Statement count(db, "SELECT COUNT(DISTINCT image) FROM instances WHERE fingerprint = ?1");
    count.bind(1, fingerprint);
    count.step();
    return static_cast<std::uint64_t>(count.integer(0));
}

bool recorded(sqlite3* db, const std::string& fingerprint, const std::string& image) {
    Statement query(db, "SELECT 1 FROM instances WHERE fingerprint = ?1 AND image = ?2 LIMIT 1");
    query.bind(1, fingerprint).bind(2, image);
    return query.step();
}

std::int64_t insert(sqlite3* db, LedgerRecord& record) {
    if (record.fingerprint.empty() || record.image.empty() || record.event.empty())
        throw FormatError("ledger record needs a fingerprint, an image and an event");
    if (record.time.empty()) record.time = utc_timestamp();
    Statement insert(db,
                     "INSERT INTO instances (fingerprint, image, uuid, time, policy_path, policy_hash, event) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    insert.bind(1, record.fingerprint).bind(2, record.image).bind(3, record.uuid).bind(4, record.time);
    insert.bind(5, record.policy_path).bind(6, record.policy_hash).bind(7, record.event);
    insert.step();
    record.id = sqlite3_last_insert_rowid(db);
    return record.id;
}

}  // namespace

std::string utc_timestamp() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

struct Ledger::Impl {
    DbPtr db;
    std::filesystem::path path;
};

Ledger::Ledger(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Ledger::Ledger(Ledger&&) noexcept = default;
Ledger& Ledger::operator=(Ledger&&) noexcept = default;
Ledger::~Ledger() noexcept = default;

sqlite3* Ledger::native_handle() const noexcept { return impl_->db.get(); }
const std::filesystem::path& Ledger::path() const noexcept { return impl_->path; }

std::filesystem::path Ledger::default_path() { return "/var/lib/luksforge/ledger.db"; }

Ledger Ledger::open(const std::filesystem::path& path) {
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
    {
        WriteTransaction transaction(db.get());
        exec(db.get(), schema, "ledger schema");
        transaction.commit();
    }
    auto impl = std::make_unique<Impl>();
    impl->db = std::move(db);
    impl->path = path;
    return Ledger(std::move(impl));
}

std::int64_t Ledger::record(LedgerRecord record) {
    WriteTransaction transaction(native_handle());
    std::int64_t id = insert(native_handle(), record);
    transaction.commit();
    return id;
}

std::int64_t Ledger::reserve(LedgerRecord record, std::uint64_t max_instances) {
    WriteTransaction transaction(native_handle());
    std::uint64_t count = count_in(native_handle(), record.fingerprint);
    bool known = recorded(native_handle(), record.fingerprint, record.image);
    if (!known && count + 1 > max_instances)
        throw LimitError("volume key " + record.fingerprint.substr(0, 16) + "... already has " +
                         std::to_string(count) + " instance" + (count == 1 ? "" : "s") + " in the ledger " +
                         path().string() + "; the policy allows at most " + std::to_string(max_instances));
    std::int64_t id = insert(native_handle(), record);
    transaction.commit();
    return id;
}

void Ledger::release(std::int64_t id) {
    WriteTransaction transaction(native_handle());
    Statement remove(native_handle(), "DELETE FROM instances WHERE id = ?1");
    remove.bind(1, id);
    remove.step();
    transaction.commit();
}

std::uint64_t Ledger::count_instances(const std::string& fingerprint) const {
    return count_in(native_handle(), fingerprint);
}

std::vector<LedgerRecord> Ledger::records(const std::optional<std::string>& fingerprint) const {
    Statement query(native_handle(),
                    fingerprint ? "SELECT id, fingerprint, image, uuid, time, policy_path, policy_hash, event "
                                  "FROM instances WHERE fingerprint = ?1 ORDER BY id"
                                : "SELECT id, fingerprint, image, uuid, time, policy_path, policy_hash, event "
                                  "FROM instances ORDER BY id");
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
        result.push_back(std::move(r));
    }
    return result;
}

}  // namespace luksforge
