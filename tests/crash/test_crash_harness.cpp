// The crash harness (issue 13, item 2): SIGKILL luksforge at every named step (LUKSFORGE_CRASH_AT), at
// libcryptsetup's and luksforge's own write points (kill_hook.cpp: before each crypt_* write call, after each
// write()/fsync() to a file or device, also a torn half-write) and at random moments, during format, bind,
// unbind, regen, rekey, seal and stamp. After every kill:
//   - stock `cryptsetup luksDump` accepts the header;
//   - a credential valid before or after the command opens it (stock `cryptsetup open --test-passphrase`; for
//     Clevis bindings with the passphrase stock `clevis luks pass` recovers) — right after the kill, or, in the
//     windows where libcryptsetup itself cannot open the header (its re-encryption teardown), after the rerun;
//   - rerunning the same command ends in the intended state, checked with stock tools;
//   - the data decrypts (OpenSSL AES-XTS, independent of libcryptsetup) to what was written;
//   - no secret is left in a file (no stray files, no passphrase in plain text in the image or anywhere in the
//     work directory).
// The default run samples a few points of each kind per command (about a minute and a half); with
// LUKSFORGE_CRASH_FULL=1 it kills at every write point and step and at 10 random moments per command
// (>= 200 trials). The counts are printed either way.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "crash_support.hpp"
#include "tang_server.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>

#include <jansson.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <set>

using namespace luksforge;
using namespace luksforge::test;
using namespace luksforge::test::crash;
namespace fs = std::filesystem;

namespace {

bool full_run() {
    const char* full = std::getenv("LUKSFORGE_CRASH_FULL");
    return full != nullptr && std::string(full) == "1";
}

// Start the CLI, SIGKILL it after `delay`; its exit code (128 + 9 when the kill landed).
int run_killed_after(const std::vector<std::string>& args, std::chrono::microseconds delay) {
    std::vector<std::string> argv{LUKSFORGE_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
        std::vector<char*> raw;
        for (auto& a : argv) raw.push_back(a.data());
        raw.push_back(nullptr);
        ::execv(raw[0], raw.data());
        ::_exit(127);
    }
    ::usleep(static_cast<useconds_t>(delay.count()));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

// Header hygiene as stock cryptsetup dumps it: every token names at least one keyslot and only existing ones
// (luksforge's own keyslot-less state records aside); every keyslot other than `passphrase_slots` is served by
// a clevis token (no orphan whose passphrase is lost); no unbound keyslot; no re-encryption left.
void check_no_orphans(const fs::path& image, const std::set<std::string>& passphrase_slots) {
    json_error_t error;
    json_t* header = json_loads(header_json(image).c_str(), 0, &error);
    REQUIRE(header != nullptr);
    json_t* keyslots = json_object_get(header, "keyslots");
    std::set<std::string> served;
    const char* id = nullptr;
    json_t* value = nullptr;
    json_object_foreach(json_object_get(header, "tokens"), id, value) {
        const std::string type = json_string_value(json_object_get(value, "type"));
        json_t* assigned = json_object_get(value, "keyslots");
        if (type.rfind("luksforge-", 0) == 0 && json_array_size(assigned) == 0) {
            CHECK_MESSAGE(false, "state record " << type << " left behind");
            continue;
        }
        CHECK_MESSAGE(json_array_size(assigned) == 1, "token " << std::string(id) << " names " << json_array_size(assigned) << " keyslots");
        std::size_t i = 0;
        json_t* slot = nullptr;
        json_array_foreach(assigned, i, slot) {
            CHECK_MESSAGE(json_object_get(keyslots, json_string_value(slot)) != nullptr, "token " << std::string(id) << " names a missing keyslot");
            if (type == "clevis") served.insert(json_string_value(slot));
        }
    }
    json_object_foreach(keyslots, id, value) {
        CHECK_MESSAGE(std::string(json_string_value(json_object_get(value, "type"))) == "luks2", "keyslot " << std::string(id));
        CHECK_MESSAGE((passphrase_slots.count(id) != 0 || served.count(id) != 0),
                      "keyslot " << std::string(id) << " has no clevis token (orphan)");
    }
    CHECK(json_object_get(json_object_get(header, "config"), "requirements") == nullptr);
    json_decref(header);
}

// No stray file (a .partial, a temporary) in `dir`, and no secret in plain text in any file under it except
// the passphrase files the test wrote itself.
void check_no_secret_left(const fs::path& dir, const std::vector<std::string>& secrets, const std::set<std::string>& allowed) {
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
        if (!entry.is_regular_file()) continue;
        const std::string name = entry.path().filename().string();
        CHECK_MESSAGE(!name.ends_with(".partial"), "left behind: " << entry.path());
        if (allowed.count(name) != 0) continue;
        const std::string bytes = read_file_bytes(entry.path());
        for (const std::string& secret : secrets)
            if (!secret.empty()) CHECK_MESSAGE(bytes.find(secret) == std::string::npos, "secret in " << entry.path());
    }
}

struct Counts {
    int trials = 0, killed = 0, finished_first = 0, open_right_after = 0, open_only_after_rerun = 0, rerun_ok = 0,
        final_ok = 0;
};
std::map<std::string, Counts>& counts() {
    static std::map<std::string, Counts> all;
    return all;
}

// One command under test: how to make its starting image, how to run it, what "done" means.
struct Operation {
    std::string name;
    std::vector<std::string> named_steps;                                   // LUKSFORGE_CRASH_AT values
    std::function<void(const fs::path& trial)> prepare;                     // the starting state in `trial`
    std::function<std::vector<std::string>(const fs::path& trial)> args;   // the command
    std::function<bool(const fs::path& trial)> opens_now;                   // a valid credential opens it
    std::function<void(const fs::path& trial)> check_done;                  // the intended final state
    std::function<bool(const RunResult&)> rerun_ok = [](const RunResult& r) { return r.exit_code == 0; };
    std::function<fs::path(const fs::path& trial)> image;                   // for luksDump after the kill
};

enum class Kind { write_point, torn_write, named_step, random_moment };

void trial(const Operation& op, const fs::path& work, Kind kind, std::size_t point, const std::string& step,
           std::chrono::microseconds delay, const std::vector<std::string>& secrets, const std::set<std::string>& allowed) {
    const fs::path t = work / "trial";
    fs::remove_all(t);
    fs::create_directories(t);
    op.prepare(t);
    Counts& c = counts()[op.name];
    ++c.trials;
    int code = 0;
    if (kind == Kind::random_moment) {
        code = run_killed_after(op.args(t), delay);
    } else {
        std::map<std::string, std::string> env;
        if (kind == Kind::named_step) env["LUKSFORGE_CRASH_AT"] = step;
        else env["LUKSFORGE_HOOK_KILL"] = std::to_string(point);
        if (kind == Kind::torn_write) env["LUKSFORGE_HOOK_TORN"] = "1";
        code = run_hooked(op.args(t), env).exit_code;
    }
    if (code == 128 + 9) ++c.killed;
    else ++c.finished_first;
    if (kind != Kind::random_moment) CHECK_MESSAGE(code == 128 + 9, "the kill did not land");
    const fs::path image = op.image(t);
    if (fs::exists(image)) CHECK_MESSAGE(luksdump_ok(image), "luksDump refuses the header after the kill");
    const bool opens = op.opens_now(t);
    const RunResult rerun = run_cli(op.args(t));
    CHECK_MESSAGE(op.rerun_ok(rerun), "rerun: " << rerun.err);
    if (op.rerun_ok(rerun)) ++c.rerun_ok;
    if (opens) ++c.open_right_after;
    else ++c.open_only_after_rerun;
    op.check_done(t);
    check_no_secret_left(t, secrets, allowed);
    ++c.final_ok;
}

void walk(const Operation& op, const fs::path& work, const std::vector<std::string>& secrets,
          const std::set<std::string>& allowed, std::mt19937& rng) {
    // Record the run's events (and its duration, for the random moments) on a fresh starting state.
    const fs::path probe = work / "trial";
    fs::remove_all(probe);
    fs::create_directories(probe);
    op.prepare(probe);
    const auto started = std::chrono::steady_clock::now();
    const std::vector<std::string> events = record_events(op.args(probe));
    const auto took = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
    REQUIRE(!events.empty());

    const std::size_t write_trials = full_run() ? events.size() : std::min<std::size_t>(events.size(), 6);
    for (std::size_t i = 0; i < write_trials; ++i) {
        // Evenly spread over the run in the short version; every point in the full one.
        const std::size_t point = full_run() ? i + 1 : 1 + (i * (events.size() - 1)) / std::max<std::size_t>(1, write_trials - 1);
        CAPTURE(op.name);
        CAPTURE(point);
        CAPTURE(events[point - 1]);
        trial(op, work, Kind::write_point, point, {}, {}, secrets, allowed);
    }
    // Torn half-writes: a few in the short run, every write of the header-bearing kind in the full one.
    std::vector<std::size_t> writes;
    for (std::size_t i = 0; i < events.size(); ++i)
        if (events[i] == "write") writes.push_back(i + 1);
    const std::size_t torn_trials = full_run() ? std::min<std::size_t>(writes.size(), 12) : std::min<std::size_t>(writes.size(), 1);
    for (std::size_t i = 0; i < torn_trials; ++i) {
        const std::size_t point = writes[(i * writes.size()) / std::max<std::size_t>(1, torn_trials)];
        CAPTURE(op.name);
        CAPTURE(point);
        trial(op, work, Kind::torn_write, point, {}, {}, secrets, allowed);
    }
    for (std::size_t i = 0; i < op.named_steps.size(); ++i) {
        if (!full_run() && i % 3 != 0) continue;
        CAPTURE(op.name);
        CAPTURE(op.named_steps[i]);
        trial(op, work, Kind::named_step, 0, op.named_steps[i], {}, secrets, allowed);
    }
    const int random_trials = full_run() ? 10 : 1;
    std::uniform_int_distribution<long> moment(0, took.count());
    for (int i = 0; i < random_trials; ++i) {
        const std::chrono::microseconds delay(moment(rng));
        CAPTURE(op.name);
        CAPTURE(delay.count());
        trial(op, work, Kind::random_moment, 0, {}, delay, secrets, allowed);
    }
}

}  // namespace

TEST_CASE("kill -9 at every write point, named step and random moment of format, bind, unbind, regen, rekey, seal, stamp") {
    TempDir dir;
    test::TangServer tang;
    std::mt19937 rng(std::random_device{}());
    const std::string build = "crash harness build passphrase";
    const KnownImage base = make_known_image(dir.path(), "base.img", build);
    const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
    const fs::path policy = dir / "policy.toml";
    write_file(policy, "max_instances_per_key = 1\n[[tang]]\nurl = \"" + tang.url() + "\"\nthp = \"" + tang.thumbprint() + "\"\n");
    const std::string old_fingerprint = Volume::open(base.image, Volume::Access::read_only).fingerprint();

    // A bound copy (keyslot 0: build passphrase, keyslot 1: tang binding) and a sealed one (binding only).
    const KnownImage bound = copy_image(base, dir / "bound.img");
    REQUIRE(run_cli({"bind", bound.image.string(), "tang", config, "--passphrase-file", base.passphrase_file.string()}).exit_code == 0);
    REQUIRE(clevis_slots(bound.image) == std::vector<int>{1});
    const KnownImage sealed = copy_image(base, dir / "sealed.img");
    {
        const RunResult s = run_cli({"seal", sealed.image.string(), "--policy", policy.string(), "--build-passphrase-file",
                                     base.passphrase_file.string(), "--ledger", (dir / "ledger.db").string(), "-q"});
        REQUIRE_MESSAGE(s.exit_code == 0, s.err);
    }
    const std::string sealed_fingerprint = Volume::open(sealed.image, Volume::Access::read_only).fingerprint();
    const std::vector<std::string> sealed_pass = working_bindings(sealed.image);
    REQUIRE(sealed_pass.size() == 1);

    const auto img = [](const fs::path& t) { return t / "disk.img"; };
    const auto copy_to = [&](const KnownImage& from) {
        return [&from, img](const fs::path& t) { run_ok({"cp", "--sparse=always", from.image.string(), img(t).string()}); };
    };
    const auto build_or_clevis_opens = [&](const fs::path& t) {
        return stock_opens(img(t), build) || !working_bindings(img(t)).empty();
    };
    const std::vector<std::string> secrets{build, sealed_pass[0]};
    const std::set<std::string> allowed{"base.img.pass"};

    std::vector<Operation> ops;
    {
        Operation op;
        op.name = "format";
        op.image = img;
        op.prepare = [&](const fs::path& t) { write_file(t / "format.pass", "format passphrase"); };
        op.args = [&](const fs::path& t) {
            return std::vector<std::string>{"format", img(t).string(), "--size", "20M", "--passphrase-file",
                                            (t / "format.pass").string(), "--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000"};
        };
        // Before: no image (nothing to open); after: the passphrase opens it.
        op.opens_now = [&](const fs::path& t) { return !fs::exists(img(t)) || stock_opens(img(t), "format passphrase"); };
        // A format that finished before the kill is not repeated over its own volume (that needs --force).
        op.rerun_ok = [](const RunResult& r) { return r.exit_code == 0 || r.err.find("--force") != std::string::npos; };
        op.check_done = [&](const fs::path& t) {
            CHECK(stock_opens(img(t), "format passphrase"));
            check_no_orphans(img(t), {"0"});
        };
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "rekey";
        op.image = img;
        op.prepare = copy_to(base);
        op.args = [&](const fs::path& t) {
            return std::vector<std::string>{"rekey", img(t).string(), "--passphrase-file", base.passphrase_file.string()};
        };
        op.opens_now = [&](const fs::path& t) { return stock_opens(img(t), build); };
        op.check_done = [&](const fs::path& t) {
            CHECK(stock_opens(img(t), build));
            CHECK(data_intact(img(t), build, base.plain_sha256));
            CHECK(Volume::open(img(t), Volume::Access::read_only).fingerprint() != old_fingerprint);
            check_no_orphans(img(t), {"0", "1", "2", "3"});
            CHECK(Volume::open(img(t), Volume::Access::read_only).keyslots().size() == 1);
        };
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "bind";
        op.image = img;
        op.prepare = copy_to(base);
        op.args = [&](const fs::path& t) {
            return std::vector<std::string>{"bind", img(t).string(), "tang", config, "--passphrase-file",
                                            base.passphrase_file.string()};
        };
        op.opens_now = build_or_clevis_opens;
        op.check_done = [&](const fs::path& t) {
            CHECK(stock_opens(img(t), build, 0));
            const std::vector<std::string> bindings = working_bindings(img(t));
            CHECK(!bindings.empty());
            for (const std::string& pass : bindings) CHECK(data_intact(img(t), pass, base.plain_sha256));
            check_no_orphans(img(t), {"0"});
        };
        op.named_steps = clevis::bind_crash_points();
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "unbind";
        op.image = img;
        op.prepare = copy_to(bound);
        op.args = [&](const fs::path& t) { return std::vector<std::string>{"unbind", img(t).string(), "-s", "1"}; };
        op.opens_now = build_or_clevis_opens;
        // Rerunning after a finished unbind says there is nothing to unbind: the state is what counts.
        op.rerun_ok = [](const RunResult&) { return true; };
        op.check_done = [&](const fs::path& t) {
            CHECK(stock_opens(img(t), build, 0));
            CHECK(clevis_slots(img(t)).empty());
            CHECK(Volume::open(img(t), Volume::Access::read_only).keyslots().size() == 1);
            check_no_orphans(img(t), {"0"});
        };
        op.named_steps = clevis::unbind_crash_points();
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "regen";
        op.image = img;
        op.prepare = copy_to(bound);
        op.args = [&](const fs::path& t) { return std::vector<std::string>{"regen", img(t).string(), "-s", "1"}; };
        op.opens_now = build_or_clevis_opens;
        op.check_done = [&](const fs::path& t) {
            CHECK(stock_opens(img(t), build, 0));
            CHECK(clevis_slots(img(t)) == std::vector<int>{1});
            const std::vector<std::string> bindings = working_bindings(img(t));
            REQUIRE(bindings.size() == 1);
            CHECK(data_intact(img(t), bindings[0], base.plain_sha256));
            check_no_orphans(img(t), {"0"});
        };
        op.named_steps = clevis::regen_crash_points();
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "seal";
        op.image = img;
        op.prepare = copy_to(base);
        op.args = [&](const fs::path& t) {
            return std::vector<std::string>{"seal", img(t).string(), "--policy", policy.string(), "--build-passphrase-file",
                                            base.passphrase_file.string(), "--ledger", (t / "ledger.db").string(), "-q"};
        };
        op.opens_now = build_or_clevis_opens;
        op.check_done = [&](const fs::path& t) {
            CHECK_FALSE(stock_opens(img(t), build));
            const std::vector<std::string> bindings = working_bindings(img(t));
            REQUIRE(bindings.size() == 1);
            CHECK(data_intact(img(t), bindings[0], base.plain_sha256));
            CHECK(Volume::open(img(t), Volume::Access::read_only).fingerprint() != old_fingerprint);
            CHECK(Volume::open(img(t), Volume::Access::read_only).keyslots().size() == 1);
            check_no_orphans(img(t), {});
        };
        op.named_steps = seal_crash_points();
        ops.push_back(op);
    }
    {
        Operation op;
        op.name = "stamp";
        op.image = [](const fs::path& t) { return t / "base.img"; };
        op.prepare = [&](const fs::path& t) {
            run_ok({"cp", "--sparse=always", sealed.image.string(), (t / "base.img").string()});
        };
        op.args = [&](const fs::path& t) {
            return std::vector<std::string>{"stamp", (t / "base.img").string(), "--count", "1", "--out", (t / "out").string(),
                                            "--ledger", (t / "ledger.db").string()};
        };
        op.opens_now = [&](const fs::path& t) { return !working_bindings(t / "base.img").empty(); };
        op.check_done = [&](const fs::path& t) {
            // The base is untouched; every published instance is complete, with its own key and binding.
            CHECK(working_bindings(t / "base.img").size() == 1);
            int instances = 0;
            for (const auto& entry : fs::directory_iterator(t / "out")) {
                const fs::path instance = entry.path();
                if (instance.filename().string().starts_with(".")) continue;
                ++instances;
                CAPTURE(instance);
                const std::vector<std::string> bindings = working_bindings(instance);
                REQUIRE(bindings.size() == 1);
                CHECK(bindings[0] != sealed_pass[0]);
                CHECK(data_intact(instance, bindings[0], base.plain_sha256));
                CHECK(Volume::open(instance, Volume::Access::read_only).fingerprint() != sealed_fingerprint);
                check_no_orphans(instance, {});
            }
            CHECK(instances >= 1);
        };
        ops.push_back(op);
    }

    const fs::path work = dir / "work";
    for (const Operation& op : ops) walk(op, work, secrets, allowed, rng);

    int total = 0;
    std::printf("crash harness (%s run): command trials killed finished-first opened-right-after opened-after-rerun rerun-ok final-ok\n",
                full_run() ? "full" : "short");
    for (const auto& [name, c] : counts()) {
        std::printf("  %-7s %4d %4d %4d %4d %4d %4d %4d\n", name.c_str(), c.trials, c.killed, c.finished_first,
                    c.open_right_after, c.open_only_after_rerun, c.rerun_ok, c.final_ok);
        total += c.trials;
    }
    std::printf("  total   %4d trials\n", total);
    if (full_run()) CHECK(total >= 200);
}
