// The ledger's two backends under the same suite: SQLite (a file) and PostgreSQL (a real server this test
// starts with initdb/pg_ctl as an unprivileged user on a unix socket in a temporary directory, and stops).
// Exact limits with 8 concurrent `luksforge clone` processes, leases that expire after a builder is killed,
// a database that goes away mid-clone, the policy's `ledger`, schema versions and migration, no password in a URL.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <luksforge/ledger.hpp>

#include "testutil.hpp"

#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using namespace luksforge;
using luksforge::test::TempDir;

namespace {

constexpr const char* kPgUser = "nobody";

std::string find_pg_program(const std::string& name) {
    if (luksforge::test::have_program(name)) return name;
    glob_t found{};
    std::string result;
    if (::glob(("/usr/lib/postgresql/*/bin/" + name).c_str(), 0, nullptr, &found) == 0 && found.gl_pathc > 0)
        result = found.gl_pathv[found.gl_pathc - 1];
    ::globfree(&found);
    if (result.empty()) FAIL("PostgreSQL's " << name << " is not installed (tools/deps.sh installs postgresql)");
    return result;
}

// A throw-away PostgreSQL cluster owned by `nobody`, listening only on a unix socket.
class PostgresServer {
public:
    PostgresServer() {
        ::chmod(dir_.path().c_str(), 0755);
        data_ = dir_ / "data";
        socket_ = dir_ / "socket";
        fs::create_directories(data_);
        fs::create_directories(socket_);
        luksforge::test::run_ok({"chown", std::string(kPgUser), data_.string(), socket_.string()});
        luksforge::test::run_ok({"runuser", "-u", kPgUser, "--", find_pg_program("initdb"), "-D", data_.string(), "-A",
                                 "trust", "-U", "luksforge", "--no-sync", "-E", "UTF8"});
        start();
    }
    ~PostgresServer() { stop(); }

    void start() {
        luksforge::test::run_ok({"runuser", "-u", kPgUser, "--", find_pg_program("pg_ctl"), "-D", data_.string(), "-l",
                                 (socket_ / "log").string(), "-w", "-o",
                                 "-k " + socket_.string() + " -c listen_addresses= -c fsync=off", "start"});
        running_ = true;
    }
    void stop() noexcept {
        if (!running_) return;
        luksforge::test::run({"runuser", "-u", kPgUser, "--", find_pg_program("pg_ctl"), "-D", data_.string(), "-m",
                              "immediate", "-w", "stop"});
        running_ = false;
    }
    std::string url() const { return "postgresql:///postgres?host=" + socket_.string() + "&user=luksforge"; }

private:
    TempDir dir_;
    fs::path data_, socket_;
    bool running_ = false;
};

// Each backend once; `location` is where the suite's ledger lives.
struct Backend {
    std::string name;
    std::string location;
};

LedgerRecord make(const std::string& fingerprint, const std::string& image, const std::string& event = "cloned") {
    LedgerRecord r;
    r.fingerprint = fingerprint;
    r.image = image;
    r.uuid = "00000000-0000-0000-0000-000000000000";
    r.event = event;
    return r;
}

// A small LUKS2 file (fast pbkdf2) to clone.
fs::path make_base(const TempDir& dir) {
    fs::path base = dir / "base.img";
    luksforge::test::make_sparse_file(base, 20ull << 20);
    luksforge::test::run_ok({"cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
                             "--pbkdf-force-iterations", "1000", "--key-file", "-", base.string()},
                            "build passphrase");
    return base;
}

// `luksforge ARGS` in the background with extra environment; returns its pid.
pid_t spawn_cli(const std::vector<std::string>& args, const std::vector<std::string>& env) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        std::vector<char*> argv{const_cast<char*>(LUKSFORGE_CLI)};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(LUKSFORGE_CLI, argv.data());
        ::_exit(127);
    }
    return pid;
}

int wait_exit(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Wait until `pid` stopped itself (LUKSFORGE_STOP_AT).
void wait_stopped(pid_t pid) {
    for (int i = 0; i < 600; ++i) {
        int status = 0;
        if (::waitpid(pid, &status, WUNTRACED | WNOHANG) == pid && WIFSTOPPED(status)) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("luksforge never reached its stop point");
}

void run_suite(const Backend& backend, const std::string& fingerprint_seed) {
    const std::string fp_a(64, fingerprint_seed[0]);
    const std::string fp_b(64, fingerprint_seed[1]);
    INFO("backend " << backend.name);

    SUBCASE("schema version, record, reserve, commit, release") {
        Ledger ledger = Ledger::open(backend.location);
        CHECK(ledger.schema_version() == 2);
        ledger.record(make(fp_a, "/img/base", "sealed"));
        const std::int64_t one = ledger.reserve(make(fp_a, "/img/1"), 3);
        const std::int64_t two = ledger.reserve(make(fp_a, "/img/2"), 3);
        CHECK(ledger.count_instances(fp_a) == 3);
        CHECK_THROWS_AS(ledger.reserve(make(fp_a, "/img/3"), 3), LimitError);
        // The same image again does not count twice.
        ledger.commit(ledger.reserve(make(fp_a, "/img/base", "sealed"), 3));
        ledger.commit(one);
        ledger.commit(one);  // no-op
        ledger.release(two);
        CHECK(ledger.count_instances(fp_a) == 2);
        std::vector<LedgerRecord> records = ledger.records(fp_a);
        REQUIRE(records.size() == 3);
        CHECK(records[0].state == "committed");
        CHECK(records[1].image == "/img/1");
        CHECK(ledger_records_json(records).find("\"state\": \"committed\"") != std::string::npos);
        CHECK_THROWS_AS(ledger.commit(two), NotFoundError);
    }

    SUBCASE("a reservation whose lease ran out frees its slot; its late commit re-checks the limit") {
        Ledger ledger = Ledger::open(backend.location);
        ledger.set_lease_seconds(1);
        const std::int64_t first = ledger.reserve(make(fp_b, "/img/a"), 1);
        CHECK_THROWS_AS(ledger.reserve(make(fp_b, "/img/b"), 1), LimitError);
        std::this_thread::sleep_for(std::chrono::milliseconds(2200));
        CHECK(ledger.count_instances(fp_b) == 0);
        CHECK(ledger.records(fp_b).at(0).state == "expired");
        const std::int64_t second = ledger.reserve(make(fp_b, "/img/b"), 1);
        CHECK_THROWS_AS(ledger.commit(first), LimitError);  // the slot went to /img/b
        ledger.commit(second);
        CHECK(ledger.count_instances(fp_b) == 1);
        CHECK(ledger.records(fp_b).size() == 1);
    }
}

void run_clone_suite(const Backend& backend, PostgresServer* server) {
    TempDir dir;
    const fs::path base = make_base(dir);
    INFO("backend " << backend.name);

    SUBCASE("8 concurrent clones with max_instances_per_key = 5 record exactly 5 (the base and 4 clones)") {
        std::vector<pid_t> pids;
        for (int i = 0; i < 8; ++i)
            pids.push_back(spawn_cli({"clone", base.string(), (dir / ("c" + std::to_string(i) + ".img")).string(),
                                      "--ledger", backend.location, "--max-per-key", "5"},
                                     {}));
        int succeeded = 0, refused = 0;
        for (pid_t pid : pids) {
            const int code = wait_exit(pid);
            if (code == 0) ++succeeded;
            else if (code == 8) ++refused;  // exit_shared_keys
            else FAIL("clone exited with " << code);
        }
        CHECK(succeeded == 4);
        CHECK(refused == 4);
        int images = 0;
        for (int i = 0; i < 8; ++i) images += fs::exists(dir / ("c" + std::to_string(i) + ".img")) ? 1 : 0;
        CHECK(images == 4);
        Ledger ledger = Ledger::open(backend.location);
        const std::string fingerprint = ledger.records().back().fingerprint;
        CHECK(ledger.count_instances(fingerprint) == 5);
        for (const LedgerRecord& r : ledger.records(fingerprint)) CHECK(r.state == "committed");

        // Operators' views of the same database.
        auto audited = luksforge::test::run_cli(
            {"audit", dir.path().string(), "--json", "--max-per-key", "5", "--ledger", backend.location});
        CHECK(audited.exit_code == 0);
        CHECK(audited.out.find("\"instances\": 5") != std::string::npos);
        auto listed = luksforge::test::run_cli({"ledger", "list", "--json", "--ledger", backend.location});
        CHECK(listed.exit_code == 0);
        CHECK(listed.out.find("\"event\": \"cloned\"") != std::string::npos);
        auto from_env = luksforge::test::run({"env", "LUKSFORGE_LEDGER=" + backend.location, LUKSFORGE_CLI, "ledger", "export"});
        CHECK(from_env.exit_code == 0);
        CHECK(from_env.out == listed.out);
    }

    SUBCASE("a clone killed with SIGKILL after reserving holds its slot only until the lease runs out") {
        pid_t pid = spawn_cli({"clone", base.string(), (dir / "killed.img").string(), "--ledger", backend.location,
                               "--max-per-key", "2"},
                              {"LUKSFORGE_STOP_AT=clone-reserved", "LUKSFORGE_LEDGER_LEASE_SECONDS=2"});
        wait_stopped(pid);
        ::kill(pid, SIGKILL);
        CHECK(wait_exit(pid) == 128 + SIGKILL);
        // Base + the dead reservation fill the limit of 2.
        auto refused = luksforge::test::run_cli(
            {"clone", base.string(), (dir / "early.img").string(), "--ledger", backend.location, "--max-per-key", "2"});
        CHECK(refused.exit_code == 8);
        CHECK(!fs::exists(dir / "early.img"));
        std::this_thread::sleep_for(std::chrono::milliseconds(2500));
        auto later = luksforge::test::run_cli(
            {"clone", base.string(), (dir / "late.img").string(), "--ledger", backend.location, "--max-per-key", "2"});
        CHECK(later.exit_code == 0);
        CHECK(fs::exists(dir / "late.img"));
        CHECK(!fs::exists(dir / "killed.img"));
    }

    SUBCASE("the policy's ledger names the database when --ledger is not given; --ledger overrides it") {
        const fs::path policy = dir / "farm.toml";
        std::ofstream(policy) << "ledger = \"" << backend.location << "\"\nmax_instances_per_key = 2\n";
        const std::vector<std::string> no_env = {"env", "-u", "LUKSFORGE_LEDGER", LUKSFORGE_CLI, "clone", base.string()};
        auto clone = [&](const std::string& name, std::vector<std::string> extra) {
            std::vector<std::string> args = no_env;
            args.push_back((dir / name).string());
            args.insert(args.end(), {"--policy", policy.string()});
            args.insert(args.end(), extra.begin(), extra.end());
            return luksforge::test::run(args);
        };
        CHECK(clone("p1.img", {}).exit_code == 0);
        auto refused = clone("p2.img", {});
        CHECK(refused.exit_code == 8);
        CHECK(refused.err.find(backend.location) != std::string::npos);
        Ledger ledger = Ledger::open(backend.location);
        CHECK(ledger.count_instances(ledger.records().back().fingerprint) == 2);
        // Another database given on the command line: its own count (base + this clone).
        CHECK(clone("p3.img", {"--ledger", (dir / "other.db").string()}).exit_code == 0);
        CHECK(Ledger::open(dir / "other.db").records().size() == 2);
    }

    if (server != nullptr) {
        SUBCASE("the database going away mid-clone: a clear error and no unrecorded image") {
            pid_t pid = spawn_cli({"clone", base.string(), (dir / "orphan.img").string(), "--ledger", backend.location,
                                   "--max-per-key", "5"},
                                  {"LUKSFORGE_STOP_AT=clone-copied"});
            wait_stopped(pid);
            server->stop();
            ::kill(pid, SIGCONT);
            CHECK(wait_exit(pid) == 1);
            CHECK(!fs::exists(dir / "orphan.img"));
            for (const auto& entry : fs::directory_iterator(dir.path()))
                CHECK(entry.path().filename().string().find(".partial") == std::string::npos);
            auto again = luksforge::test::run_cli(
                {"clone", base.string(), (dir / "again.img").string(), "--ledger", backend.location});
            CHECK(again.exit_code != 0);
            CHECK(again.err.find("cannot connect to the ledger") != std::string::npos);
            server->start();
        }
    }
}

}  // namespace

TEST_CASE("SQLite ledger: the backend suite") {
    TempDir dir;
    run_suite({"sqlite", (dir / "ledger.db").string()}, "12");
}

TEST_CASE("PostgreSQL ledger: the backend suite") {
    PostgresServer server;
    run_suite({"postgresql", server.url()}, "34");
}

TEST_CASE("SQLite ledger: concurrent and killed clones") {
    TempDir dir;
    run_clone_suite({"sqlite", (dir / "ledger.db").string()}, nullptr);
}

TEST_CASE("PostgreSQL ledger: concurrent and killed clones, database gone mid-clone") {
    PostgresServer server;
    run_clone_suite({"postgresql", server.url()}, &server);
}

TEST_CASE("a ledger URL with a password is refused; an unreachable server is a clear error") {
    CHECK_THROWS_AS(Ledger::open("postgresql://luksforge:secret@127.0.0.1:1/postgres"), FormatError);
    TempDir dir;
    try {
        Ledger::open("postgresql:///postgres?host=" + dir.path().string());
        FAIL("connected to nothing");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find("cannot connect to the ledger") != std::string::npos);
    }
}

TEST_CASE("an SQLite ledger from before schema versions is migrated to version 2, records kept") {
    TempDir dir;
    const fs::path db = dir / "old.db";
    luksforge::test::run_ok(
        {"sqlite3", db.string(),
         "CREATE TABLE instances (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, image TEXT NOT NULL, uuid TEXT "
         "NOT NULL DEFAULT '', time TEXT NOT NULL, policy_path TEXT NOT NULL DEFAULT '', policy_hash TEXT NOT NULL "
         "DEFAULT '', event TEXT NOT NULL); INSERT INTO instances (fingerprint, image, time, event) VALUES ('" +
             std::string(64, 'f') + "', '/old.img', '2026-01-01T00:00:00Z', 'sealed');"});
    Ledger ledger = Ledger::open(db);
    CHECK(ledger.schema_version() == 2);
    auto records = ledger.records();
    REQUIRE(records.size() == 1);
    CHECK(records[0].state == "committed");
    CHECK(ledger.count_instances(std::string(64, 'f')) == 1);
    luksforge::test::run_ok({"sqlite3", db.string(), "UPDATE schema_version SET version = 99"});
    CHECK_THROWS_AS(Ledger::open(db), FormatError);
}
