// The key ledger: records, counts, atomic reservations under concurrent writers, file permissions.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <luksforge/ledger.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace luksforge;

namespace {

struct ScratchDir {
    fs::path path;
    ScratchDir() {
        char tmpl[] = "/tmp/luksforge-ledger-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

LedgerRecord make(const std::string& fingerprint, const std::string& image, const std::string& event = "stamped") {
    LedgerRecord r;
    r.fingerprint = fingerprint;
    r.image = image;
    r.uuid = "00000000-0000-0000-0000-000000000000";
    r.policy_path = "/etc/luksforge/policy.toml";
    r.policy_hash = std::string(64, 'a');
    r.event = event;
    return r;
}

std::string fp(char c) { return std::string(64, c); }

}  // namespace

TEST_CASE("a new ledger is created 0600 in a 0700 directory, with the schema") {
    ScratchDir dir;
    fs::path db = dir.path / "sub" / "ledger.db";
    {
        Ledger ledger = Ledger::open(db);
        CHECK(ledger.path() == db);
        ledger.record(make(fp('1'), "/images/a.img", "sealed"));
    }
    struct stat st{};
    REQUIRE(::stat(db.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::stat((dir.path / "sub").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    // WAL is persistent in the file: the sqlite3 CLI sees it and the record.
    std::string cmd = "test \"$(sqlite3 " + db.string() + " 'PRAGMA journal_mode; SELECT COUNT(*) FROM instances;' | tr '\\n' ' ')\" = 'wal 1 '";
    CHECK(std::system(cmd.c_str()) == 0);
}

TEST_CASE("records round-trip and count distinct images per fingerprint") {
    ScratchDir dir;
    Ledger ledger = Ledger::open(dir.path / "ledger.db");
    std::int64_t a = ledger.record(make(fp('a'), "/images/base.img", "sealed"));
    ledger.record(make(fp('a'), "/images/copy1.img", "cloned"));
    ledger.record(make(fp('a'), "/images/copy1.img", "cloned"));  // the same image again counts once
    ledger.record(make(fp('b'), "/images/other.img", "stamped"));
    CHECK(ledger.count_instances(fp('a')) == 2);
    CHECK(ledger.count_instances(fp('b')) == 1);
    CHECK(ledger.count_instances(fp('c')) == 0);

    auto records = ledger.records(fp('a'));
    REQUIRE(records.size() == 3);
    CHECK(records[0].id == a);
    CHECK(records[0].image == "/images/base.img");
    CHECK(records[0].event == "sealed");
    CHECK(records[0].policy_hash == std::string(64, 'a'));
    CHECK(records[0].time.size() == 20);  // 2026-11-29T10:57:45Z
    CHECK(records[0].time.back() == 'Z');
    CHECK(ledger.records().size() == 4);

    // Reopening sees everything.
    Ledger again = Ledger::open(dir.path / "ledger.db");
    CHECK(again.count_instances(fp('a')) == 2);
}

TEST_CASE("reserve refuses to exceed the maximum and release frees the place") {
    ScratchDir dir;
    Ledger ledger = Ledger::open(dir.path / "ledger.db");
    ledger.reserve(make(fp('k'), "/i/1.img"), 2);
    std::int64_t second = ledger.reserve(make(fp('k'), "/i/2.img"), 2);
    CHECK_THROWS_AS(ledger.reserve(make(fp('k'), "/i/3.img"), 2), LimitError);
    // Recording an image that is already an instance does not add an instance.
    CHECK_NOTHROW(ledger.reserve(make(fp('k'), "/i/2.img"), 2));
    CHECK(ledger.count_instances(fp('k')) == 2);
    ledger.release(second);
    CHECK(ledger.count_instances(fp('k')) == 2);  // /i/2.img still has its second record
    for (const auto& r : ledger.records(fp('k')))
        if (r.image == "/i/2.img") ledger.release(r.id);
    CHECK(ledger.count_instances(fp('k')) == 1);
    CHECK_NOTHROW(ledger.reserve(make(fp('k'), "/i/3.img"), 2));
    try {
        ledger.reserve(make(fp('k'), "/i/4.img"), 2);
        FAIL("reserve beyond the maximum must throw");
    } catch (const LimitError& e) {
        CHECK(std::string(e.what()).find("at most 2") != std::string::npos);
        CHECK(e.code().value() == EDQUOT);
    }
}

TEST_CASE("concurrent writers never overshoot a reservation limit") {
    ScratchDir dir;
    fs::path db = dir.path / "ledger.db";
    Ledger::open(db);  // create first so every child opens an existing WAL database
    constexpr int writers = 12;
    constexpr int max = 5;
    std::vector<pid_t> children;
    for (int i = 0; i < writers; ++i) {
        pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            int status = 3;
            try {
                Ledger ledger = Ledger::open(db);
                // Several unconditional records too, to contend for the write lock.
                ledger.record(make(fp('x'), "/noise/" + std::to_string(i) + ".img"));
                ledger.reserve(make(fp('s'), "/shared/" + std::to_string(i) + ".img", "cloned"), max);
                status = 0;
            } catch (const LimitError&) {
                status = 1;
            } catch (...) {
                status = 2;
            }
            ::_exit(status);
        }
        children.push_back(pid);
    }
    int granted = 0, refused = 0, failed = 0;
    for (pid_t pid : children) {
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        REQUIRE(WIFEXITED(status));
        int code = WEXITSTATUS(status);
        granted += code == 0;
        refused += code == 1;
        failed += code >= 2;
    }
    CHECK(failed == 0);
    CHECK(granted == max);
    CHECK(refused == writers - max);
    Ledger ledger = Ledger::open(db);
    CHECK(ledger.count_instances(fp('s')) == max);
    CHECK(ledger.count_instances(fp('x')) == writers);
}

TEST_CASE("a file that is not a database is a clear error") {
    ScratchDir dir;
    fs::path bogus = dir.path / "not-a-db";
    REQUIRE(std::system(("head -c 4096 /dev/urandom > " + bogus.string()).c_str()) == 0);
    CHECK_THROWS_AS(Ledger::open(bogus), Error);
}
