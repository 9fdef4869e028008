// Deterministic reproducers of the crash windows of issue 13, each killed at the exact libcryptsetup write
// point (kill_hook.cpp) where it used to leave an image that a rerun could not finish:
//   A  the re-encryption teardown between its keyslot destroys (old key gone, "reencryption" still set)
//   B  a hotzone write (the only data segment flagged in-reencryption)
//   C  rekey rerun after a kill before the re-encryption started (unbound keyslots of the first attempt)
//   F  format after the header, before keyslot 0
//   G  two rekeys of two copies of one image (one LUKS UUID) at the same time
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "crash_support.hpp"

#include <luksforge/luks.hpp>

#include <jansson.h>

#include <cstdlib>

using namespace luksforge;
using namespace luksforge::test;
using namespace luksforge::test::crash;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> rekey_args(const KnownImage& img) {
    return {"rekey", img.image.string(), "--passphrase-file", img.passphrase_file.string()};
}

// The state every finished rekey must leave: one keyslot opened by the passphrase (stock cryptsetup agrees),
// no re-encryption, a new fingerprint, the data intact under the new key.
void check_rekeyed(const KnownImage& img, const std::string& old_fingerprint) {
    CHECK(luksdump_ok(img.image));
    CHECK(stock_opens(img.image, img.passphrase));
    Volume volume = Volume::open(img.image, Volume::Access::read_only);
    const Inspection info = volume.inspect();
    CHECK_FALSE(info.reencryption_in_progress);
    CHECK(info.keyslots.size() == 1);
    for (const Keyslot& slot : info.keyslots) CHECK(slot.bound_to_segment);
    CHECK(info.fingerprint != old_fingerprint);
    CHECK(data_intact(img.image, img.passphrase, img.plain_sha256));
    CHECK(header_json(img.image).find("online-reencrypt") == std::string::npos);
}

std::string fingerprint(const fs::path& image) { return Volume::open(image, Volume::Access::read_only).fingerprint(); }

// Every kill point with LUKSFORGE_CRASH_FULL=1; in the default run every `stride`-th (the first included).
std::size_t stride(std::size_t every) {
    const char* full = std::getenv("LUKSFORGE_CRASH_FULL");
    return full != nullptr && std::string(full) == "1" ? 1 : every;
}

}  // namespace

TEST_CASE("A: rekey killed inside libcryptsetup's re-encryption teardown: the rerun finishes it") {
    TempDir dir;
    const KnownImage base = make_known_image(dir.path(), "base.img");
    const std::string before = fingerprint(base.image);
    const KnownImage probe = copy_image(base, dir / "probe.img");
    const std::vector<std::string> events = record_events(rekey_args(probe));
    const std::size_t first_destroy = event_index(events, "crypt_keyslot_destroy", 1);
    REQUIRE(first_destroy > 0);
    REQUIRE(event_index(events, "crypt_keyslot_destroy", 2) > first_destroy);  // old keyslot, then the reencrypt one
    // Every write point from the first destroy to the end of the teardown.
    for (std::size_t kill_at = first_destroy + 1; kill_at <= events.size(); kill_at += stride(4)) {
        CAPTURE(kill_at);
        CAPTURE(events[kill_at - 1]);
        const KnownImage img = copy_image(base, dir / "a.img");
        const RunResult killed = run_hooked(rekey_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}});
        REQUIRE(killed.exit_code == 128 + 9);
        CHECK(luksdump_ok(img.image));
        const RunResult rerun = run_cli(rekey_args(img));
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        check_rekeyed(img, before);
        fs::remove(img.image);
    }
}

TEST_CASE("B: rekey killed during a hotzone write: inspect works and the rerun recovers and finishes") {
    TempDir dir;
    const KnownImage base = make_known_image(dir.path(), "base.img");
    const std::string before = fingerprint(base.image);
    const KnownImage probe = copy_image(base, dir / "probe.img");
    const std::vector<std::string> events = record_events(rekey_args(probe));
    const std::size_t run = event_index(events, "crypt_reencrypt_run");
    const std::size_t destroy = event_index(events, "crypt_keyslot_destroy");
    REQUIRE(run > 0);
    REQUIRE(destroy > run);
    for (std::size_t kill_at = run + 1; kill_at < destroy; kill_at += stride(4)) {
        for (const bool torn : {false, true}) {
            if (torn && events[kill_at - 1] != "write") continue;
            CAPTURE(kill_at);
            CAPTURE(torn);
            const KnownImage img = copy_image(base, dir / "b.img");
            std::map<std::string, std::string> env{{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}};
            if (torn) env["LUKSFORGE_HOOK_TORN"] = "1";
            REQUIRE(run_hooked(rekey_args(img), env).exit_code == 128 + 9);
            CHECK(luksdump_ok(img.image));
            const RunResult inspect = run_cli({"inspect", img.image.string(), "--json"});
            CHECK_MESSAGE(inspect.exit_code == 0, inspect.err);
            const RunResult rerun = run_cli(rekey_args(img));
            CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
            check_rekeyed(img, before);
            fs::remove(img.image);
        }
    }
}

TEST_CASE("C: rekey killed before re-encryption started: the rerun leaves one keyslot and the token names it alone") {
    TempDir dir;
    const KnownImage base = make_known_image(dir.path(), "base.img");
    // A token serving keyslot 0 (as a Clevis binding would).
    const fs::path token = dir / "token.json";
    write_file(token, R"({"type":"luksforge-test","keyslots":["0"]})");
    REQUIRE(run_cli({"token", "import", base.image.string(), "--json-file", token.string()}).exit_code == 0);
    const std::string before = fingerprint(base.image);
    const KnownImage probe = copy_image(base, dir / "probe.img");
    const std::vector<std::string> events = record_events(rekey_args(probe));
    const std::size_t run = event_index(events, "crypt_reencrypt_run");
    REQUIRE(run > 0);
    // Counting down from the last point before the re-encryption starts (always included).
    for (std::size_t kill_at = run; kill_at >= 1; kill_at = kill_at > stride(5) ? kill_at - stride(5) : 0) {
        CAPTURE(kill_at);
        CAPTURE(events[kill_at - 1]);
        const KnownImage img = copy_image(base, dir / "c.img");
        REQUIRE(run_hooked(rekey_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}}).exit_code == 128 + 9);
        CHECK(stock_opens(img.image, img.passphrase));
        const RunResult rerun = run_cli(rekey_args(img));
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        check_rekeyed(img, before);
        Volume volume = Volume::open(img.image, Volume::Access::read_only);
        const std::vector<Token> tokens = volume.tokens();
        REQUIRE(tokens.size() == 1);
        REQUIRE(volume.keyslots().size() == 1);
        CHECK(tokens[0].keyslots == std::vector<int>{volume.keyslots()[0].id});
        fs::remove(img.image);
    }
}

TEST_CASE("F: format killed after the header, before keyslot 0: the same command again finishes it") {
    TempDir dir;
    const fs::path pass = dir / "pass";
    write_file(pass, "format passphrase");
    const auto format_args = [&](const fs::path& image) {
        return std::vector<std::string>{"format", image.string(), "--size", "20M", "--passphrase-file", pass.string(),
                                        "--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000"};
    };
    const std::vector<std::string> events = record_events(format_args(dir / "probe.img"));
    const std::size_t add = event_index(events, "crypt_keyslot_add_by_volume_key");
    REQUIRE(add > 0);
    for (std::size_t kill_at = 1; kill_at <= add; kill_at += stride(4)) {
        CAPTURE(kill_at);
        CAPTURE(events[kill_at - 1]);
        const fs::path image = dir / "f.img";
        REQUIRE(run_hooked(format_args(image), {{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}}).exit_code == 128 + 9);
        const RunResult rerun = run_cli(format_args(image));
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        CHECK(stock_opens(image, "format passphrase"));
        fs::remove(image);
    }
    // In place (the file exists already): a header without any keyslot or token is what the kill left, and
    // formatting it again without --force is allowed.
    for (std::size_t kill_at = stride(2) == 1 ? 1 : add; kill_at <= add; ++kill_at) {
        CAPTURE(kill_at);
        const fs::path image = dir / "in-place.img";
        make_sparse_file(image, 20 * kMiB);
        const RunResult killed = run_hooked(format_args(image), {{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}});
        REQUIRE(killed.exit_code == 128 + 9);
        if (events[kill_at - 1] == "crypt_keyslot_add_by_volume_key") {
            const RunResult rerun = run_cli(format_args(image));
            CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
            CHECK(stock_opens(image, "format passphrase"));
        }
        fs::remove(image);
    }
    for (const auto& entry : fs::directory_iterator(dir.path()))
        CHECK_MESSAGE(!entry.path().filename().string().ends_with(".partial"), entry.path());

    // A LUKS volume that has a keyslot is still never overwritten without --force.
    const fs::path kept = dir / "kept.img";
    REQUIRE(run_cli(format_args(kept)).exit_code == 0);
    const RunResult again = run_cli(format_args(kept));
    CHECK(again.exit_code != 0);
    CHECK(again.err.find("--force") != std::string::npos);
}

TEST_CASE("G: two rekeys of two copies of one image (same LUKS UUID) at the same time both finish") {
    TempDir dir;
    const KnownImage base = make_known_image(dir.path(), "base.img");
    const std::string before = fingerprint(base.image);
    const KnownImage first = copy_image(base, dir / "first.img");
    const KnownImage second = copy_image(base, dir / "second.img");
    const KnownImage probe = copy_image(base, dir / "probe.img");
    const std::vector<std::string> events = record_events(rekey_args(probe));
    // The first process sleeps 3 s right inside its re-encryption (libcryptsetup's UUID lock held) while the
    // second one starts.
    const std::size_t stall = event_index(events, "crypt_reencrypt_run") + 2;
    const std::string script =
        std::string("env LD_PRELOAD='") + LUKSFORGE_KILL_HOOK + "' LUKSFORGE_HOOK_STALL=" + std::to_string(stall) +
        " LUKSFORGE_HOOK_STALL_MS=3000 '" + LUKSFORGE_CLI + "' rekey '" + first.image.string() +
        "' --passphrase-file '" + first.passphrase_file.string() + "' >/dev/null 2>&1 & pid=$!; sleep 1; '" +
        LUKSFORGE_CLI + "' rekey '" + second.image.string() + "' --passphrase-file '" +
        second.passphrase_file.string() + "' >/dev/null; b=$?; wait $pid; a=$?; echo $a $b";
    const std::string codes = run_ok({"sh", "-c", script});
    CHECK(codes == "0 0\n");
    check_rekeyed(first, before);
    check_rekeyed(second, before);
    CHECK(fingerprint(first.image) != fingerprint(second.image));
}

TEST_CASE("secrets: a running luksforge holding passphrases has no core dumps and no secret in cmdline or environ") {
    TempDir dir;
    const KnownImage img = make_known_image(dir.path(), "disk.img", "secret-passphrase-do-not-leak");
    const KnownImage probe = copy_image(img, dir / "probe.img");
    const std::vector<std::string> events = record_events(rekey_args(probe));
    // Stall inside the re-encryption (the passphrase and both volume keys are in memory) and look at the process.
    const std::size_t stall = event_index(events, "crypt_reencrypt_run") + 2;
    const fs::path pid_file = dir / "pid";
    // Core dumps allowed in the shell that starts it: only luksforge itself turns them off.
    const std::string script = std::string("ulimit -c unlimited; env LD_PRELOAD='") + LUKSFORGE_KILL_HOOK + "' LUKSFORGE_HOOK_STALL=" +
                               std::to_string(stall) + " LUKSFORGE_HOOK_STALL_MS=3000 '" + LUKSFORGE_CLI + "' rekey '" +
                               img.image.string() + "' --passphrase-file '" + img.passphrase_file.string() +
                               "' >/dev/null 2>&1 & echo $! > '" + pid_file.string() + "'; sleep 1.5; p=$(cat '" +
                               pid_file.string() + "'); grep 'Max core file size' /proc/$p/limits; "
                               "tr '\\0' ' ' < /proc/$p/cmdline; echo; tr '\\0' ' ' < /proc/$p/environ; echo; "
                               "stat -c %u /proc/$p/mem; wait $p; echo rc=$?";
    const std::string out = run_ok({"sh", "-c", script});
    CAPTURE(out);
    CHECK(out.find("Max core file size        0                    0") != std::string::npos);
    CHECK(out.find("secret-passphrase-do-not-leak") == std::string::npos);
    CHECK(out.find("rekey") != std::string::npos);  // the cmdline was read
    CHECK(out.find("rc=0") != std::string::npos);
    // No secret in any file luksforge left behind (the passphrase file is the test's own).
    for (const auto& entry : fs::directory_iterator(dir.path())) {
        if (entry.path() == img.passphrase_file || entry.path() == probe.passphrase_file) continue;
        CHECK(read_file_bytes(entry.path()).find("secret-passphrase-do-not-leak") == std::string::npos);
    }
}
