// Secrets never leak (issue 13, item 6): the main CLI paths — format, inspect, bind, list, unlock --test, pass,
// rekey, seal (with its progress messages and --report), stamp (with --report and the ledger), an error path —
// are run and every passphrase and volume key involved is looked for, raw, in hex (both cases) and in base64
// and base64url at every alignment, in each command's stdout and stderr, in every file the commands left in
// the work directory (reports, ledger, images, instances) and in /proc/PID/cmdline and environ while the
// process holds them (bind, rekey, seal stalled by the kill hook inside their libcryptsetup calls; core dumps
// must be off then, too). The CLI has no verbose or debug
// mode: what it prints by default (progress included) is all it ever logs; libcryptsetup's log callback keeps
// error lines only (lib/src/util/cryptsetup_util.cpp).
// The one intended exception: `pass` writes the recovered keyslot passphrase to its stdout (as `clevis luks
// pass`); its stderr is checked.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "crash_support.hpp"
#include "tang_server.hpp"

#include <luksforge/luks.hpp>
#include <luksforge/secret.hpp>

#include <set>

using namespace luksforge;
using namespace luksforge::test;
using namespace luksforge::test::crash;
namespace fs = std::filesystem;

namespace {

std::string hex(const std::string& bytes, bool upper) {
    static const char* digits[] = {"0123456789abcdef", "0123456789ABCDEF"};
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[upper][c >> 4];
        out += digits[upper][c & 15];
    }
    return out;
}

std::string base64(const std::string& bytes, bool url) {
    const char* alphabet = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                               : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                           static_cast<unsigned char>(bytes[i + 2]);
        for (int shift : {18, 12, 6, 0}) out += alphabet[(v >> shift) & 63];
    }
    return out;  // whole groups only: the callers take the part that does not depend on the neighbours
}

// Every form a secret could take in text: raw, hex, and the stable middle of base64/base64url of it at each of
// the three byte alignments it can have inside a longer encoded buffer.
std::vector<std::string> forms(const std::string& secret) {
    std::vector<std::string> out{secret, hex(secret, false), hex(secret, true)};
    for (bool url : {false, true}) {
        for (std::size_t lead = 0; lead < 3; ++lead) {
            const std::string encoded = base64(std::string(lead, '\0') + secret, url);
            // The first group holds the lead bytes (when there are any); the last whole group is kept.
            const std::size_t skip = lead == 0 ? 0 : 4;
            if (encoded.size() > skip + 16) out.push_back(encoded.substr(skip));
        }
    }
    return out;
}

bool any_form_in(const std::string& secret, const std::string& text) {
    for (const std::string& form : forms(secret))
        if (text.find(form) != std::string::npos) return true;
    return false;
}

struct Secrets {
    std::vector<std::pair<std::string, std::string>> named;  // what, bytes
    void add(const std::string& what, const std::string& bytes) {
        REQUIRE(bytes.size() >= 16);
        named.emplace_back(what, bytes);
    }
    // No form of any secret in `text` (from `where`).
    void check_absent(const std::string& where, const std::string& text) const {
        for (const auto& [what, bytes] : named)
            for (const std::string& form : forms(bytes))
                CHECK_MESSAGE(text.find(form) == std::string::npos, what << " appears in " << where);
    }
};

std::string volume_key_of(const fs::path& image, const std::string& passphrase) {
    const SecretBuffer key = Volume::open(image, Volume::Access::read_only).volume_key(passphrase);
    return std::string(key.chars(), key.size());
}

// Run the CLI, check its output against `secrets` (stdout too unless `stdout_is_the_secret`), return it.
RunResult checked(const Secrets& secrets, const std::vector<std::string>& args, bool stdout_is_the_secret = false,
                  const std::string& input = {}) {
    const RunResult r = run_cli(args, input);
    const std::string what = "`luksforge " + args[0] + "`";
    if (!stdout_is_the_secret) secrets.check_absent(what + " stdout", r.out);
    secrets.check_absent(what + " stderr", r.err);
    return r;
}

// /proc/PID/limits, cmdline and environ of the CLI running `args`, sampled while it sleeps at event `stall`
// (inside a libcryptsetup call: passphrases and keys are in memory). Core dumps are allowed in the shell that
// starts it: only luksforge itself turns them off.
std::string proc_views_while_running(const fs::path& dir, const std::vector<std::string>& args, std::size_t stall) {
    REQUIRE(stall > 0);
    std::string command = std::string("ulimit -c unlimited; env ASAN_OPTIONS=\"$ASAN_OPTIONS:verify_asan_link_order=0\" LD_PRELOAD='") + LUKSFORGE_KILL_HOOK +
                          "' LUKSFORGE_HOOK_STALL=" + std::to_string(stall) + " LUKSFORGE_HOOK_STALL_MS=2500 '" +
                          LUKSFORGE_CLI + "'";
    for (const std::string& a : args) command += " '" + a + "'";
    const fs::path pid_file = dir / "pid";
    const std::string script = command + " >/dev/null 2>&1 & echo $! > '" + pid_file.string() + "'; sleep 1.2; p=$(cat '" +
                               pid_file.string() + "'); grep 'Max core file size' /proc/$p/limits; echo cmdline:; "
                               "tr '\\0' ' ' < /proc/$p/cmdline; echo; echo environ:; tr '\\0' ' ' < /proc/$p/environ; "
                               "echo; wait $p; echo rc=$?";
    const std::string out = run_ok({"sh", "-c", script});
    fs::remove(pid_file);
    CAPTURE(out);
    CHECK(out.find("Max core file size        0                    0") != std::string::npos);
    CHECK(out.find("rc=0") != std::string::npos);
    CHECK(out.find(" " + args[0] + " ") != std::string::npos);  // the cmdline was really read
    return out;
}

}  // namespace

TEST_CASE("no passphrase or volume key in output, reports, ledger, files, cmdline or environ of the main CLI paths") {
    TempDir dir;
    test::TangServer tang;
    Secrets secrets;
    const std::string build = "leak probe build passphrase 5f1c9e";
    const fs::path pass = dir / "build.pass";
    write_file(pass, build);
    secrets.add("the build passphrase", build);
    // Control: the search finds a secret embedded in hex or base64(url) text at every alignment.
    for (std::size_t lead = 0; lead < 3; ++lead) {
        const std::string embedded = std::string(lead, '\x01') + build + "tail";
        CHECK(any_form_in(build, "{" + base64(embedded, false) + "}"));
        CHECK(any_form_in(build, "\"" + base64(embedded, true) + "\""));
        CHECK(any_form_in(build, "0x" + hex(embedded, lead == 1)));
    }
    const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
    const fs::path policy = dir / "policy.toml";
    write_file(policy, "max_instances_per_key = 1\n[[tang]]\nurl = \"" + tang.url() + "\"\nthp = \"" + tang.thumbprint() + "\"\n");
    const fs::path ledger = dir / "ledger.db";
    const fs::path image = dir / "disk.img";

    // format (the passphrase from stdin once), inspect.
    REQUIRE(checked(secrets, {"format", image.string(), "--size", "24M", "--passphrase-file", "-", "--pbkdf", "pbkdf2",
                              "--pbkdf-iterations", "1000"}, false, build).exit_code == 0);
    secrets.add("the formatted volume key", volume_key_of(image, build));
    CHECK(checked(secrets, {"inspect", image.string(), "--json"}).exit_code == 0);

    // bind, list, unlock --test, pass; a wrong passphrase (the error path).
    const fs::path wrong = dir / "wrong.pass";
    write_file(wrong, "leak probe wrong passphrase 0b7d42");
    secrets.add("a wrong passphrase", "leak probe wrong passphrase 0b7d42");
    CHECK(checked(secrets, {"bind", image.string(), "tang", config, "--passphrase-file", wrong.string()}).exit_code == 3);
    REQUIRE(checked(secrets, {"bind", image.string(), "tang", config, "--passphrase-file", pass.string(), "--json"}).exit_code == 0);
    CHECK(checked(secrets, {"list", image.string(), "--json"}).exit_code == 0);
    CHECK(checked(secrets, {"unlock", image.string(), "--test"}).exit_code == 0);
    const RunResult recovered = checked(secrets, {"pass", image.string(), "--slot", "1"}, true);
    REQUIRE(recovered.exit_code == 0);
    secrets.add("the bound keyslot's passphrase", recovered.out);
    secrets.check_absent("`luksforge pass` stderr", recovered.err);
    const fs::path slot_pass = dir / "slot.pass";  // rekey needs every keyslot's passphrase
    write_file(slot_pass, recovered.out);

    // cmdline and environ of bind while it holds the existing and the new passphrase and the volume key.
    {
        const fs::path probe = dir / "probe.img";
        run_ok({"cp", "--sparse=always", image.string(), probe.string()});
        const std::vector<std::string> args{"bind", probe.string(), "tang", config, "--passphrase-file", pass.string()};
        const std::vector<std::string> events = record_events(args);
        run_ok({"cp", "--sparse=always", image.string(), probe.string()});
        secrets.check_absent("/proc of a running bind",
                             proc_views_while_running(dir.path(), args, event_index(events, "crypt_keyslot_add_by_key")));
        fs::remove(probe);
    }

    // rekey --json, then seal of a copy (progress messages on, --report, the ledger).
    const fs::path copy = dir / "copy.img";
    run_ok({"cp", "--sparse=always", image.string(), copy.string()});
    {
        const fs::path probe = dir / "rekey-probe.img";
        run_ok({"cp", "--sparse=always", image.string(), probe.string()});
        const std::vector<std::string> args{"rekey", probe.string(), "--passphrase-file", pass.string(),
                                            "--passphrase-file", slot_pass.string()};
        const std::vector<std::string> events = record_events(args);
        run_ok({"cp", "--sparse=always", image.string(), probe.string()});
        // Inside the re-encryption: the passphrase and both volume keys are in memory.
        secrets.check_absent("/proc of a running rekey",
                             proc_views_while_running(dir.path(), args, event_index(events, "crypt_reencrypt_run") + 2));
        fs::remove(probe);
    }
    REQUIRE(checked(secrets, {"rekey", image.string(), "--passphrase-file", pass.string(), "--passphrase-file",
                              slot_pass.string(), "--json"}).exit_code == 0);
    secrets.add("the re-keyed volume key", volume_key_of(image, build));
    const std::vector<std::string> seal_args{"seal", copy.string(), "--policy", policy.string(), "--build-passphrase-file",
                                             pass.string(), "--report", (dir / "seal-report.json").string(), "--ledger",
                                             ledger.string()};
    {
        const fs::path probe = dir / "seal-probe.img";
        run_ok({"cp", "--sparse=always", copy.string(), probe.string()});
        std::vector<std::string> args = seal_args;
        args[1] = probe.string();
        args.back() = (dir / "probe-ledger.db").string();
        const std::vector<std::string> events = record_events(args);
        run_ok({"cp", "--sparse=always", copy.string(), probe.string()});
        fs::remove(dir / "probe-ledger.db");
        secrets.check_absent("/proc of a running seal",
                             proc_views_while_running(dir.path(), args, event_index(events, "crypt_reencrypt_run") + 2));
        fs::remove(probe);
        fs::remove(dir / "probe-ledger.db");
    }
    REQUIRE(checked(secrets, seal_args).exit_code == 0);
    const RunResult sealed_pass = run_cli({"pass", copy.string()});
    REQUIRE(sealed_pass.exit_code == 0);
    secrets.add("the sealed binding's passphrase", sealed_pass.out);
    secrets.add("the sealed volume key", volume_key_of(copy, sealed_pass.out));

    // stamp with --report and the ledger; every instance's passphrase and key.
    const fs::path out = dir / "instances";
    REQUIRE(checked(secrets, {"stamp", copy.string(), "--count", "2", "--out", out.string(), "--ledger", ledger.string(),
                              "--report", (dir / "stamp-report.json").string(), "--json"}).exit_code == 0);
    int instances = 0;
    for (const auto& entry : fs::directory_iterator(out)) {
        const RunResult p = run_cli({"pass", entry.path().string()});
        REQUIRE(p.exit_code == 0);
        secrets.add("the passphrase of " + entry.path().filename().string(), p.out);
        secrets.add("the volume key of " + entry.path().filename().string(), volume_key_of(entry.path(), p.out));
        ++instances;
    }
    CHECK(instances == 2);
    CHECK(checked(secrets, {"ledger", "list", "--ledger", ledger.string(), "--json"}).exit_code == 0);

    // Every file left behind: reports, the ledger, the images and instances (headers and data areas); only
    // the test's own passphrase files hold a passphrase.
    const std::set<std::string> own{"build.pass", "wrong.pass", "slot.pass"};
    std::size_t files = 0;
    for (const auto& entry : fs::recursive_directory_iterator(dir.path())) {
        if (!entry.is_regular_file() || own.count(entry.path().filename().string()) != 0) continue;
        secrets.check_absent(entry.path().string(), read_file_bytes(entry.path()));
        ++files;
    }
    CHECK(files >= 6);  // disk, copy, two instances, two reports, the ledger
}
