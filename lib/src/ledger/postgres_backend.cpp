// The ledger backend over PostgreSQL (libpq), for a build farm: many builders on many hosts share one count.
// Each check-then-insert is one transaction holding a transaction-scoped advisory lock on the fingerprint, so
// reservations of one key are serialised by the server (READ COMMITTED then sees every earlier commit); the
// lease clock is the server's wall clock when each statement runs (never the transaction's start time).
// Credentials never travel in the URL: libpq reads PGPASSFILE / a service file.
#include "ledger/backend.hpp"
#include "ledger/libpq_api.hpp"

#include <libpq-fe.h>

#include <cerrno>
#include <initializer_list>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace luksforge::detail {
namespace {

struct ConnectionDeleter {
    void operator()(PGconn* connection) const noexcept { libpq().finish(connection); }
};
using ConnectionPtr = std::unique_ptr<PGconn, ConnectionDeleter>;

struct ResultDeleter {
    void operator()(PGresult* result) const noexcept { libpq().clear(result); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

// Migration lock: one process at a time creates or migrates the schema.
constexpr const char* kMigrationLock = "SELECT pg_advisory_xact_lock(7316372217040455)";
// The server's clock, in Unix seconds, read when the statement runs: clock_timestamp(), not now() (the
// transaction's start), because commit() and reserve() may wait on the fingerprint's advisory lock after their
// transaction began, and a lease must be judged (and a new one dated) from the moment the lock is held.
#define LEDGER_NOW "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)"
// An instance counts while committed or while its reservation's lease lasts.
#define LEDGER_LIVE "(state = 'committed' OR lease_expires > " LEDGER_NOW ")"

// migrations[v - 1] takes a ledger from version v - 1 to v (the same versions as the SQLite backend's).
constexpr const char* migrations[] = {
    R"sql(
CREATE TABLE IF NOT EXISTS instances (
    id          BIGSERIAL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    image       TEXT NOT NULL,
    uuid        TEXT NOT NULL DEFAULT '',
    "time"      TEXT NOT NULL,
    policy_path TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT '',
    event       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_fingerprint ON instances(fingerprint);
)sql",
    R"sql(
ALTER TABLE instances ADD COLUMN state TEXT NOT NULL DEFAULT 'committed';
ALTER TABLE instances ADD COLUMN lease_expires BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN max_instances BIGINT NOT NULL DEFAULT 0;
)sql",
    R"sql(
ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
)sql",
};
static_assert(std::size(migrations) == kLedgerSchemaVersion);

// A password in the URL would sit in argv, shell history and logs.
void refuse_password_in_url(const std::string& url) {
    char* error = nullptr;
    PQconninfoOption* options = libpq().conninfoParse(url.c_str(), &error);
    if (options == nullptr) {
        std::string message = error != nullptr ? error : "out of memory";
        libpq().freemem(error);
        throw FormatError("bad ledger URL " + url + ": " + message);
    }
    bool has_password = false;
    for (PQconninfoOption* o = options; o->keyword != nullptr; ++o)
        if (std::string(o->keyword) == "password" && o->val != nullptr && *o->val != '\0') has_password = true;
    libpq().conninfoFree(options);
    if (has_password)
        throw FormatError("the ledger URL carries a password; put it in PGPASSFILE (~/.pgpass) or a service file");
}

class PostgresBackend final : public LedgerBackend {
public:
    explicit PostgresBackend(const std::string& url) : url_(url) {
        refuse_password_in_url(url);
        // Later parameters override earlier ones: the URL's own settings win over these defaults.
        const char* keywords[] = {"application_name", "connect_timeout", "dbname", nullptr};
        const char* values[] = {"luksforge", "10", url.c_str(), nullptr};
        connection_.reset(libpq().connectdbParams(keywords, values, 1));
        if (!connection_) throw Error(ENOMEM, "cannot connect to the ledger " + url_);
        if (libpq().status(connection_.get()) != CONNECTION_OK)
            throw Error(ECONNREFUSED, "cannot connect to the ledger " + url_ + ": " + last_error());
        // Server notices (e.g. "terminating connection due to administrator command") would go to stderr raw;
        // the error that follows carries them.
        libpq().setNoticeProcessor(connection_.get(), [](void*, const char*) {}, nullptr);
        run("SET client_min_messages = warning", {}, "ledger session");
        migrate();
    }

    int schema_version() override {
        ResultPtr result = run("SELECT MAX(version) FROM schema_version", {}, "ledger schema version");
        return libpq().getisnull(result.get(), 0, 0) ? 0 : std::stoi(libpq().getvalue(result.get(), 0, 0));
    }

    std::int64_t record(LedgerRecord& record) override {
        Transaction transaction(*this);
        lock_fingerprint(record.fingerprint);
        const std::int64_t id = insert(record, false, 0, 0);
        transaction.commit();
        return id;
    }

    std::int64_t reserve(LedgerRecord& record, std::uint64_t max_instances, std::int64_t lease_seconds) override {
        Transaction transaction(*this);
        lock_fingerprint(record.fingerprint);
        const std::uint64_t count = count_live(record.fingerprint);
        if (!live_image(record.fingerprint, record.image) && count + 1 > max_instances)
            throw_limit(record, count, max_instances, url_);
        const std::int64_t id = insert(record, true, lease_seconds, max_instances);
        transaction.commit();
        return id;
    }

    void commit(std::int64_t id) override {
        Transaction transaction(*this);
        LedgerRecord record;
        {
            ResultPtr row = run("SELECT fingerprint FROM instances WHERE id = $1", {std::to_string(id)}, "ledger commit");
            if (libpq().ntuples(row.get()) == 0)
                throw NotFoundError("reservation " + std::to_string(id) + " is not in the ledger " + url_);
            record.fingerprint = libpq().getvalue(row.get(), 0, 0);
        }
        lock_fingerprint(record.fingerprint);
        ResultPtr row = run("SELECT image, state, lease_expires > " LEDGER_NOW ", max_instances FROM instances "
                            "WHERE id = $1",
                            {std::to_string(id)}, "ledger commit");
        if (libpq().ntuples(row.get()) == 0)
            throw NotFoundError("reservation " + std::to_string(id) + " is not in the ledger " + url_);
        record.image = libpq().getvalue(row.get(), 0, 0);
        if (std::string(libpq().getvalue(row.get(), 0, 1)) == "committed") return;
        if (std::string(libpq().getvalue(row.get(), 0, 2)) != "t") {
            // The lease ran out: others may have taken the slot since.
            const std::uint64_t max_instances = std::stoull(libpq().getvalue(row.get(), 0, 3));
            const std::uint64_t count = count_live(record.fingerprint);
            if (!live_image(record.fingerprint, record.image) && count + 1 > max_instances) {
                run("DELETE FROM instances WHERE id = $1", {std::to_string(id)}, "ledger commit");
                transaction.commit();
                throw_limit(record, count, max_instances, url_ + " (the reservation's lease ran out)");
            }
        }
        run("UPDATE instances SET state = 'committed' WHERE id = $1", {std::to_string(id)}, "ledger commit");
        transaction.commit();
    }

    void release(std::int64_t id) override {
        run("DELETE FROM instances WHERE id = $1", {std::to_string(id)}, "ledger release");
    }

    std::uint64_t count_instances(const std::string& fingerprint) override { return count_live(fingerprint); }

    std::vector<LedgerRecord> records(const std::optional<std::string>& fingerprint) override {
#define LEDGER_COLUMNS                                                                                               \
    "SELECT id, fingerprint, image, uuid, \"time\", policy_path, policy_hash, event, CASE WHEN state = 'committed' " \
    "THEN 'committed' WHEN lease_expires > " LEDGER_NOW " THEN 'reserved' ELSE 'expired' END, lease_expires, "        \
    "max_instances, host FROM instances "
        ResultPtr result = fingerprint ? run(LEDGER_COLUMNS "WHERE fingerprint = $1 ORDER BY id", {*fingerprint}, "ledger")
                                       : run(LEDGER_COLUMNS "ORDER BY id", {}, "ledger");
#undef LEDGER_COLUMNS
        std::vector<LedgerRecord> out;
        for (int i = 0; i < libpq().ntuples(result.get()); ++i) {
            const auto text = [&](int column) { return std::string(libpq().getvalue(result.get(), i, column)); };
            LedgerRecord r;
            r.id = std::stoll(text(0));
            r.fingerprint = text(1);
            r.image = text(2);
            r.uuid = text(3);
            r.time = text(4);
            r.policy_path = text(5);
            r.policy_hash = text(6);
            r.event = text(7);
            r.state = text(8);
            r.lease_expires = std::stoll(text(9));
            r.max_instances = std::stoull(text(10));
            r.host = text(11);
            out.push_back(std::move(r));
        }
        return out;
    }

private:
    // BEGIN … COMMIT; rolled back unless committed (nothing to roll back once the connection is gone).
    class Transaction {
    public:
        explicit Transaction(PostgresBackend& backend) : backend_(backend) { backend_.run("BEGIN", {}, "ledger transaction"); }
        Transaction(const Transaction&) = delete;
        Transaction& operator=(const Transaction&) = delete;
        ~Transaction() noexcept {
            if (!done_) libpq().clear(libpq().exec(backend_.connection_.get(), "ROLLBACK"));
        }
        void commit() {
            backend_.run("COMMIT", {}, "ledger commit");
            done_ = true;
        }

    private:
        PostgresBackend& backend_;
        bool done_ = false;
    };

    // libpq's message on one line ("server closed the connection unexpectedly\n\tThis probably means ...").
    std::string last_error() const {
        std::string message;
        for (const char* c = libpq().errorMessage(connection_.get()); *c != '\0'; ++c) {
            const bool space = *c == '\n' || *c == '\t' || *c == ' ';
            if (space && (message.empty() || message.back() == ' ')) continue;
            message += space ? ' ' : *c;
        }
        while (!message.empty() && message.back() == ' ') message.pop_back();
        return message;
    }

    ResultPtr run(const char* sql, std::initializer_list<std::string> params, const char* what) {
        std::vector<const char*> values;
        for (const std::string& p : params) values.push_back(p.c_str());
        ResultPtr result(libpq().execParams(connection_.get(), sql, static_cast<int>(values.size()), nullptr,
                                            values.data(), nullptr, nullptr, 0));
        const ExecStatusType status = result ? libpq().resultStatus(result.get()) : PGRES_FATAL_ERROR;
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
        std::string message = std::string(what) + " " + url_ + ": " + last_error();
        const char* state = result ? libpq().resultErrorField(result.get(), PG_DIAG_SQLSTATE) : nullptr;
        // libpq may not mark the connection bad on the first failed query after the server went away: a failure
        // the server never sent a SQLSTATE for, a connection exception (08...) or a shutdown (57P01-57P03) is a
        // lost connection too.
        const std::string code = state != nullptr ? state : "";
        if (libpq().status(connection_.get()) == CONNECTION_BAD || code.empty() || code.starts_with("08") ||
            code == "57P01" || code == "57P02" || code == "57P03")
            throw Error(ECONNRESET, "lost the connection to the " + message);
        if (state != nullptr && (std::string(state) == "40001" || std::string(state) == "40P01"))
            throw BusyError(message);
        throw Error(EIO, message);
    }

    // Simple-query protocol: several statements in one string.
    void run_script(const char* sql, const char* what) {
        ResultPtr result(libpq().exec(connection_.get(), sql));
        if (!result || libpq().resultStatus(result.get()) != PGRES_COMMAND_OK)
            throw Error(EIO, std::string(what) + " " + url_ + ": " + last_error());
    }

    void lock_fingerprint(const std::string& fingerprint) {
        run("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", {fingerprint}, "ledger lock");
    }

    std::uint64_t count_live(const std::string& fingerprint) {
        ResultPtr result = run("SELECT COUNT(DISTINCT image) FROM instances WHERE fingerprint = $1 AND " LEDGER_LIVE,
                               {fingerprint}, "ledger count");
        return std::stoull(libpq().getvalue(result.get(), 0, 0));
    }

    bool live_image(const std::string& fingerprint, const std::string& image) {
        ResultPtr result = run("SELECT 1 FROM instances WHERE fingerprint = $1 AND image = $2 AND " LEDGER_LIVE " LIMIT 1",
                               {fingerprint, image}, "ledger query");
        return libpq().ntuples(result.get()) > 0;
    }

    std::int64_t insert(LedgerRecord& record, bool reserved, std::int64_t lease_seconds, std::uint64_t max_instances) {
        require_complete(record);
        ResultPtr result = run(
            "INSERT INTO instances (fingerprint, image, uuid, \"time\", policy_path, policy_hash, event, state, "
            "lease_expires, max_instances, host) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, " LEDGER_NOW " + $9::bigint, "
            "$10::bigint, $11) RETURNING id",
            {record.fingerprint, record.image, record.uuid, record.time, record.policy_path, record.policy_hash,
             record.event, reserved ? "reserved" : "committed", std::to_string(reserved ? lease_seconds : 0),
             std::to_string(max_instances), record.host},
            "ledger insert");
        record.id = std::stoll(libpq().getvalue(result.get(), 0, 0));
        return record.id;
    }

    int read_version() {
        run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", {}, "ledger schema version");
        ResultPtr version = run("SELECT MAX(version) FROM schema_version", {}, "ledger schema version");
        if (!libpq().getisnull(version.get(), 0, 0)) return std::stoi(libpq().getvalue(version.get(), 0, 0));
        ResultPtr table = run("SELECT to_regclass('instances') IS NOT NULL", {}, "ledger schema version");
        return std::string(libpq().getvalue(table.get(), 0, 0)) == "t" ? 1 : 0;
    }

    void migrate() {
        Transaction transaction(*this);
        run(kMigrationLock, {}, "ledger schema lock");
        const int version = read_version();
        if (version > kLedgerSchemaVersion)
            throw FormatError("ledger " + url_ + " has schema version " + std::to_string(version) +
                              ", newer than this luksforge's " + std::to_string(kLedgerSchemaVersion));
        for (int next = version + 1; next <= kLedgerSchemaVersion; ++next)
            run_script(migrations[next - 1], "ledger schema migration");
        if (version != kLedgerSchemaVersion) {
            run("DELETE FROM schema_version", {}, "ledger schema version");
            run("INSERT INTO schema_version (version) VALUES ($1::integer)", {std::to_string(kLedgerSchemaVersion)},
                "ledger schema version");
        }
        transaction.commit();
    }

    std::string url_;
    ConnectionPtr connection_;
};

}  // namespace

std::unique_ptr<LedgerBackend> open_postgres_backend(const std::string& url) {
    return std::make_unique<PostgresBackend>(url);
}

}  // namespace luksforge::detail
