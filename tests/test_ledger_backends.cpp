// The ledger's two backends under the same suite: SQLite (a file) and PostgreSQL (a real server this test
// starts with initdb/pg_ctl as an unprivileged user on a unix socket in a temporary directory, and stops).
// Exact limits with 8 concurrent `luksforge clone` processes, leases that expire after a builder is killed,
// a database that goes away mid-clone, the policy's `ledger`, schema versions and migration, no password in a URL.
// Also: farm-wide `audit --ledger`, a PostgreSQL commit that waited on its key's lock past its lease (a second
// client, psql, holds the lock), a copy failing on a full tmpfs, `ledger prune` after a clone killed between
// commit and rename, partial copies of killed clones, a password-authenticated server read through PGPASSFILE.
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
// The ledger schema version this luksforge writes.
constexpr int kSchemaVersion = 3;

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

// A throw-away PostgreSQL cluster owned by `nobody`, listening only on a unix socket. With a password, every
// connection must authenticate with it (scram-sha-256); without, connections are trusted.
class PostgresServer {
public:
    explicit PostgresServer(const std::string& password = {}) {
        ::chmod(dir_.path().c_str(), 0755);
        data_ = dir_ / "data";
        socket_ = dir_ / "socket";
        fs::create_directories(data_);
        fs::create_directories(socket_);
        luksforge::test::run_ok({"chown", std::string(kPgUser), data_.string(), socket_.string()});
        std::vector<std::string> initdb = {"runuser", "-u", kPgUser, "--", find_pg_program("initdb"), "-D",
                                           data_.string(), "-U", "luksforge", "--no-sync", "-E", "UTF8"};
        if (password.empty()) {
            initdb.insert(initdb.end(), {"-A", "trust"});
        } else {
            const fs::path pwfile = dir_ / "pwfile";
            std::ofstream(pwfile) << password << "\n";
            luksforge::test::run_ok({"chown", std::string(kPgUser), pwfile.string()});
            initdb.insert(initdb.end(), {"-A", "scram-sha-256", "--pwfile", pwfile.string()});
        }
        luksforge::test::run_ok(initdb);
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
    // `psql -c SQL` on the server as a second client; its output.
    std::string psql(const std::string& sql) const {
        return luksforge::test::run_ok(
            {find_pg_program("psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", url(), "-c", sql});
    }

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

// `luksforge ARGS` in the background with extra environment; returns its pid. Its stderr goes to `err` when
// given (else it is the test's).
pid_t spawn_cli(const std::vector<std::string>& args, const std::vector<std::string>& env,
                const fs::path& err = {}) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        if (!err.empty()) {
            int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0) ::_exit(126);
            ::dup2(fd, 2);
        }
        std::vector<char*> argv{const_cast<char*>(LUKSFORGE_CLI)};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(LUKSFORGE_CLI, argv.data());
        ::_exit(127);
    }
    return pid;
}

// A program (searched in PATH) in the background, stdin and stdout on /dev/null; returns its pid.
pid_t spawn_program(const std::vector<std::string>& argv) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    return pid;
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
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
    const std::string fp_c(64, fingerprint_seed[2]);
    const std::string fp_d(64, fingerprint_seed[3]);
    INFO("backend " << backend.name);

    SUBCASE("schema version, record, reserve, commit, release") {
        Ledger ledger = Ledger::open(backend.location);
        CHECK(ledger.schema_version() == kSchemaVersion);
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
        CHECK(records[0].host == ledger_host_name());
        CHECK(records[1].image == "/img/1");
        CHECK(records[1].max_instances == 3);
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

    SUBCASE("audit --ledger reports the keys the whole farm shares, scanned here or not") {
        // Two builders, each with its own connection (its own host in a farm), record images of one key.
        {
            Ledger builder_a = Ledger::open(backend.location);
            LedgerRecord web = make(fp_c, "/farm/a/web.img");
            web.host = "builder-a";
            builder_a.commit(builder_a.reserve(web, 3));
            LedgerRecord alone = make(fp_d, "/farm/a/alone.img", "sealed");
            alone.host = "builder-a";
            builder_a.record(alone);
        }
        {
            Ledger builder_b = Ledger::open(backend.location);
            LedgerRecord web = make(fp_c, "/farm/b/web.img");
            web.host = "builder-b";
            builder_b.commit(builder_b.reserve(web, 3));
        }
        auto farm = luksforge::test::run_cli({"audit", "--ledger", backend.location, "--json"});
        INFO(farm.out << farm.err);
        CHECK(farm.exit_code == 0);
        CHECK(farm.out.find("\"volumes_scanned\": 0") != std::string::npos);
        const std::size_t group = farm.out.find("\"fingerprint\": \"" + fp_c + "\"");
        REQUIRE(group != std::string::npos);
        const std::string shared = farm.out.substr(group, farm.out.find("\"fingerprint\"", group + 1) - group);
        CHECK(shared.find("\"count\": 0") != std::string::npos);
        CHECK(shared.find("\"flagged\": true") != std::string::npos);  // 2 > the default limit of 1
        CHECK(shared.find("\"instances\": 2") != std::string::npos);
        CHECK(shared.find("\"/farm/a/web.img\"") != std::string::npos);
        CHECK(shared.find("\"/farm/b/web.img\"") != std::string::npos);
        CHECK(shared.find("\"max_instances\": 3") != std::string::npos);
        CHECK(farm.out.find(fp_d) == std::string::npos);  // one instance: not shared
        CHECK(luksforge::test::run_cli({"audit", "--ledger", backend.location, "--strict"}).exit_code == 8);
        auto within = luksforge::test::run_cli(
            {"audit", "--ledger", backend.location, "--max-per-key", "3", "--strict", "--no-tang-key-scan"});
        CHECK(within.exit_code == 0);
        CHECK(within.out.find("ok     " + fp_c.substr(0, 16) + "  0 images (ledger: 2, reserved under a limit of 3)") !=
              std::string::npos);
        CHECK(within.out.find("         ledger: /farm/b/web.img") != std::string::npos);
        // With paths: the scanned keys, and still the keys only the other builders hold.
        TempDir local;
        luksforge::test::write_file(local / "notes.txt", "not an image");
        auto scanned = luksforge::test::run_cli(
            {"audit", local.path().string(), "--ledger", backend.location, "--json", "--no-tang-key-scan"});
        CHECK(scanned.exit_code == 0);
        CHECK(scanned.out.find("\"fingerprint\": \"" + fp_c + "\"") != std::string::npos);
        CHECK(scanned.out.find("\"reason\"") != std::string::npos);
        // Neither a path nor a ledger: nothing to audit.
        CHECK(luksforge::test::run_cli({"audit"}).exit_code != 0);
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

    SUBCASE("a clone whose copy fails after reserving (a full file system) gives its slot back") {
        // A 64 KiB tmpfs cannot hold the base's keyslot area: the copy fails after the reservation.
        struct Tiny {
            fs::path path;
            explicit Tiny(fs::path p) : path(std::move(p)) {
                fs::create_directories(path);
                luksforge::test::run_ok({"mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", path.string()});
            }
            ~Tiny() { luksforge::test::run({"umount", path.string()}); }
        } tiny(dir / "tiny");
        auto full = luksforge::test::run_cli({"clone", base.string(), (tiny.path / "c.img").string(), "--ledger",
                                              backend.location, "--max-per-key", "2"});
        INFO(full.err);
        CHECK(full.exit_code == 1);
        CHECK(full.err.find("luksforge: error:") != std::string::npos);
        CHECK(!fs::exists(tiny.path / "c.img"));
        CHECK(fs::is_empty(tiny.path));  // no partial copy left behind
        Ledger ledger = Ledger::open(backend.location);
        const std::string fingerprint = ledger.records().back().fingerprint;
        CHECK(ledger.records().back().event == "sealed");  // the base; the clone's reservation is gone
        CHECK(ledger.count_instances(fingerprint) == 1);
        // The slot it held is free: with the limit of 2, one more clone elsewhere fits.
        auto fits = luksforge::test::run_cli({"clone", base.string(), (dir / "fits.img").string(), "--ledger",
                                              backend.location, "--max-per-key", "2"});
        CHECK(fits.exit_code == 0);
        CHECK(ledger.count_instances(fingerprint) == 2);
    }

    SUBCASE("a clone killed mid-copy leaves a partial copy (the key) that the next clone into the directory removes") {
        pid_t pid = spawn_cli({"clone", base.string(), (dir / "killed.img").string(), "--ledger", backend.location,
                               "--max-per-key", "5"},
                              {"LUKSFORGE_STOP_AT=clone-copied"});
        wait_stopped(pid);
        const fs::path partial = dir / (".killed.img." + std::to_string(pid) + ".partial");
        CHECK(fs::exists(partial));
        ::kill(pid, SIGKILL);
        CHECK(wait_exit(pid) == 128 + SIGKILL);
        REQUIRE(fs::exists(partial));
        auto next = luksforge::test::run_cli(
            {"clone", base.string(), (dir / "next.img").string(), "--ledger", backend.location, "--max-per-key", "5"});
        CHECK(next.exit_code == 0);
        CHECK(!fs::exists(partial));
    }

    SUBCASE("a clone killed between its commit and its rename leaks its slot until `ledger prune` drops it") {
        pid_t pid = spawn_cli({"clone", base.string(), (dir / "lost.img").string(), "--ledger", backend.location,
                               "--max-per-key", "2"},
                              {"LUKSFORGE_STOP_AT=clone-committed"});
        wait_stopped(pid);
        Ledger ledger = Ledger::open(backend.location);
        const std::string fingerprint = ledger.records().back().fingerprint;
        CHECK(ledger.records().back().state == "committed");
        CHECK(!fs::exists(dir / "lost.img"));
        // Still being published (its partial's process lives): prune keeps it.
        auto alive = luksforge::test::run_cli({"ledger", "prune", dir.path().string(), "--ledger", backend.location});
        CHECK(alive.exit_code == 0);
        CHECK(ledger.count_instances(fingerprint) == 2);
        ::kill(pid, SIGKILL);
        CHECK(wait_exit(pid) == 128 + SIGKILL);
        // The conservative failure: the slot stays taken (never one instance too many).
        auto refused = luksforge::test::run_cli({"clone", base.string(), (dir / "refused.img").string(), "--ledger",
                                                 backend.location, "--max-per-key", "2"});
        CHECK(refused.exit_code == 8);
        auto dry = luksforge::test::run_cli(
            {"ledger", "prune", dir.path().string(), "--dry-run", "--json", "--ledger", backend.location});
        CHECK(dry.exit_code == 0);
        CHECK(dry.out.find((dir / "lost.img").string()) != std::string::npos);
        CHECK(ledger.count_instances(fingerprint) == 2);
        // Another host's record of an image in a directory of the same path is on that host's disk: kept.
        LedgerRecord remote = make(std::string(64, '9'), (dir / "remote.img").string());
        remote.host = "builder-elsewhere";
        ledger.record(remote);
        // Another directory's records are not touched; this one's record without an image is dropped.
        CHECK(luksforge::test::run_cli({"ledger", "prune", (dir / "elsewhere").string(), "--ledger", backend.location})
                  .exit_code == 0);
        CHECK(ledger.count_instances(fingerprint) == 2);
        auto pruned = luksforge::test::run_cli({"ledger", "prune", dir.path().string(), "--ledger", backend.location});
        INFO(pruned.out << pruned.err);
        CHECK(pruned.exit_code == 0);
        CHECK(pruned.out.find((dir / "lost.img").string()) != std::string::npos);
        CHECK(ledger.count_instances(fingerprint) == 1);  // the base, which exists, stays
        CHECK(pruned.out.find("remote.img") == std::string::npos);
        CHECK(ledger.count_instances(std::string(64, '9')) >= 1);
        auto again = luksforge::test::run_cli(
            {"clone", base.string(), (dir / "again.img").string(), "--ledger", backend.location, "--max-per-key", "2"});
        CHECK(again.exit_code == 0);
    }

    if (server != nullptr) {
        SUBCASE("the database going away mid-clone: a clear error and no unrecorded image") {
            const fs::path err = dir / "orphan.err";
            pid_t pid = spawn_cli({"clone", base.string(), (dir / "orphan.img").string(), "--ledger", backend.location,
                                   "--max-per-key", "5"},
                                  {"LUKSFORGE_STOP_AT=clone-copied"}, err);
            wait_stopped(pid);
            server->stop();
            ::kill(pid, SIGCONT);
            CHECK(wait_exit(pid) == 1);
            const std::string message = read_text(err);
            INFO("stderr: " << message);
            CHECK(message.starts_with("luksforge: error: lost the connection to the ledger"));
            CHECK(message.find(backend.location) != std::string::npos);
            fs::remove(err);
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
    run_suite({"sqlite", (dir / "ledger.db").string()}, "1256");
}

TEST_CASE("PostgreSQL ledger: the backend suite") {
    PostgresServer server;
    run_suite({"postgresql", server.url()}, "3478");
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

TEST_CASE("an SQLite ledger from before schema versions is migrated to the current version, records kept") {
    TempDir dir;
    const fs::path db = dir / "old.db";
    luksforge::test::run_ok(
        {"sqlite3", db.string(),
         "CREATE TABLE instances (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, image TEXT NOT NULL, uuid TEXT "
         "NOT NULL DEFAULT '', time TEXT NOT NULL, policy_path TEXT NOT NULL DEFAULT '', policy_hash TEXT NOT NULL "
         "DEFAULT '', event TEXT NOT NULL); INSERT INTO instances (fingerprint, image, time, event) VALUES ('" +
             std::string(64, 'f') + "', '/old.img', '2026-01-01T00:00:00Z', 'sealed');"});
    Ledger ledger = Ledger::open(db);
    CHECK(ledger.schema_version() == kSchemaVersion);
    auto records = ledger.records();
    REQUIRE(records.size() == 1);
    CHECK(records[0].state == "committed");
    CHECK(ledger.count_instances(std::string(64, 'f')) == 1);
    luksforge::test::run_ok({"sqlite3", db.string(), "UPDATE schema_version SET version = 99"});
    CHECK_THROWS_AS(Ledger::open(db), FormatError);
}

TEST_CASE("PostgreSQL ledger: a commit that waited on its key's lock until its lease ran out re-checks the limit") {
    PostgresServer server;
    Ledger ledger = Ledger::open(server.url());
    ledger.set_lease_seconds(2);
    const std::string fp(64, 'e');
    const std::int64_t slow = ledger.reserve(make(fp, "/img/slow"), 1);
    // Another builder holds the key's advisory lock (the one reserve and commit take) past the lease, then takes
    // the slot the lease gave back.
    const pid_t other = spawn_program(
        {find_pg_program("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url(), "-c",
         "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('" + fp + "', 0)); SELECT pg_sleep(3.5); "
         "INSERT INTO instances (fingerprint, image, \"time\", event, state) VALUES ('" + fp +
             "', '/img/other', '2026-01-01T00:00:00Z', 'cloned', 'committed'); COMMIT;"});
    bool held = false;
    for (int i = 0; i < 100 && !held; ++i) {
        held = server.psql("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1\n";
        if (!held) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    REQUIRE(held);
    // The commit's transaction starts while the lease still runs; the lease is judged once the lock is held.
    const auto started = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(ledger.commit(slow), LimitError);
    CHECK(std::chrono::steady_clock::now() - started > std::chrono::seconds(2));
    CHECK(wait_exit(other) == 0);
    CHECK(ledger.count_instances(fp) == 1);
    const std::vector<LedgerRecord> records = ledger.records(fp);
    REQUIRE(records.size() == 1);
    CHECK(records[0].image == "/img/other");
}

TEST_CASE("a PostgreSQL ledger at schema version 1 is migrated to the current version, records kept") {
    PostgresServer server;
    const std::string fp(64, 'f');
    server.psql(
        "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1); "
        "CREATE TABLE instances (id BIGSERIAL PRIMARY KEY, fingerprint TEXT NOT NULL, image TEXT NOT NULL, uuid TEXT "
        "NOT NULL DEFAULT '', \"time\" TEXT NOT NULL, policy_path TEXT NOT NULL DEFAULT '', policy_hash TEXT NOT NULL "
        "DEFAULT '', event TEXT NOT NULL); CREATE INDEX instances_by_fingerprint ON instances(fingerprint); "
        "INSERT INTO instances (fingerprint, image, \"time\", event) VALUES ('" + fp +
        "', '/old.img', '2026-01-01T00:00:00Z', 'sealed');");
    {
        Ledger ledger = Ledger::open(server.url());
        CHECK(ledger.schema_version() == kSchemaVersion);
        auto records = ledger.records();
        REQUIRE(records.size() == 1);
        CHECK(records[0].image == "/old.img");
        CHECK(records[0].state == "committed");
        CHECK(ledger.count_instances(fp) == 1);
        CHECK_THROWS_AS(ledger.reserve(make(fp, "/new.img"), 1), LimitError);
        ledger.commit(ledger.reserve(make(fp, "/new.img"), 2));
        CHECK(ledger.count_instances(fp) == 2);
    }
    CHECK(server.psql("SELECT version FROM schema_version") == std::to_string(kSchemaVersion) + "\n");
    server.psql("UPDATE schema_version SET version = 99");
    CHECK_THROWS_AS(Ledger::open(server.url()), FormatError);
}

TEST_CASE("a PostgreSQL server with password authentication: the password comes from PGPASSFILE, never argv") {
    const std::string password = "farm-secret-7c1e";
    PostgresServer server(password);
    TempDir dir;
    const fs::path passfile = dir / "pgpass";
    luksforge::test::write_file(passfile, "*:*:*:luksforge:" + password + "\n");  // 0600, as libpq requires
    const fs::path base = make_base(dir);
    const std::string no_passfile = "PGPASSFILE=" + (dir / "none").string();
    const std::string with_passfile = "PGPASSFILE=" + passfile.string();

    // Without the file the server refuses: the password really is required.
    auto refused =
        luksforge::test::run({"env", no_passfile, LUKSFORGE_CLI, "ledger", "list", "--ledger", server.url()});
    CHECK(refused.exit_code != 0);
    CHECK(refused.err.find("cannot connect to the ledger") != std::string::npos);

    // A clone with it: stopped once it reserved (so it is connected), its argv holds no password.
    const fs::path err = dir / "clone.err";
    const pid_t pid = spawn_cli({"clone", base.string(), (dir / "c.img").string(), "--ledger", server.url(),
                                 "--max-per-key", "2"},
                                {with_passfile, "LUKSFORGE_STOP_AT=clone-reserved"}, err);
    wait_stopped(pid);
    const std::string argv = read_text("/proc/" + std::to_string(pid) + "/cmdline");
    CHECK(argv.find(server.url()) != std::string::npos);
    CHECK(argv.find(password) == std::string::npos);
    ::kill(pid, SIGCONT);
    CHECK(wait_exit(pid) == 0);
    INFO(read_text(err));
    CHECK(fs::exists(dir / "c.img"));
    auto listed = luksforge::test::run({"env", with_passfile, LUKSFORGE_CLI, "ledger", "list", "--json", "--ledger",
                                        server.url()});
    CHECK(listed.exit_code == 0);
    CHECK(listed.out.find("\"event\": \"cloned\"") != std::string::npos);
}
