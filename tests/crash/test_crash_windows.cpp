// Deterministic reproducers of the crash windows of issue 13, each killed at the exact libcryptsetup write
// point (kill_hook.cpp) where it used to leave an image that a rerun could not finish:
//   A  the re-encryption teardown between its keyslot destroys (old key gone, "reencryption" still set)
//   B  a hotzone write (the only data segment flagged in-reencryption)
//   C  rekey rerun after a kill before the re-encryption started (unbound keyslots of the first attempt)
//   F  format after the header, before keyslot 0
//   G  two rekeys of two copies of one image (one LUKS UUID) at the same time
//   bind between its keyslot and its token (the last window of issue 13: an orphaned keyslot)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "crash_support.hpp"
#include "tang_server.hpp"

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

// Token types of the header, by token id, and the keyslots each names.
std::map<std::string, std::pair<std::string, std::vector<std::string>>> tokens_of(const fs::path& image) {
    std::map<std::string, std::pair<std::string, std::vector<std::string>>> out;
    json_error_t error;
    json_t* header = json_loads(header_json(image).c_str(), 0, &error);
    REQUIRE(header != nullptr);
    const char* id = nullptr;
    json_t* token = nullptr;
    json_object_foreach(json_object_get(header, "tokens"), id, token) {
        auto& entry = out[id];
        entry.first = json_string_value(json_object_get(token, "type"));
        std::size_t i = 0;
        json_t* slot = nullptr;
        json_array_foreach(json_object_get(token, "keyslots"), i, slot) entry.second.push_back(json_string_value(slot));
    }
    json_decref(header);
    return out;
}

std::vector<int> keyslot_ids(const fs::path& image) {
    std::vector<int> ids;
    for (const Keyslot& slot : Volume::open(image, Volume::Access::read_only).keyslots()) ids.push_back(slot.id);
    return ids;
}

// One working Clevis binding on keyslot 1 and the build passphrase on keyslot 0, nothing else: no orphaned
// keyslot, no record left behind; the data decrypts with the binding's passphrase.
void check_bound_once(const KnownImage& img) {
    CHECK(luksdump_ok(img.image));
    CHECK(stock_opens(img.image, img.passphrase, 0));
    CHECK(keyslot_ids(img.image) == std::vector<int>{0, 1});
    const auto tokens = tokens_of(img.image);
    REQUIRE(tokens.size() == 1);
    CHECK(tokens.begin()->second.first == "clevis");
    CHECK(tokens.begin()->second.second == std::vector<std::string>{"1"});
    const std::vector<std::string> bindings = working_bindings(img.image);
    REQUIRE(bindings.size() == 1);
    CHECK(data_intact(img.image, bindings[0], img.plain_sha256));
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
        std::string("env ASAN_OPTIONS=\"$ASAN_OPTIONS:verify_asan_link_order=0\" LD_PRELOAD='") + LUKSFORGE_KILL_HOOK + "' LUKSFORGE_HOOK_STALL=" + std::to_string(stall) +
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

TEST_CASE("bind killed between its keyslot and its token: the rerun finishes it, no orphaned keyslot") {
    TempDir dir;
    test::TangServer tang;
    const KnownImage base = make_known_image(dir.path(), "base.img");
    const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
    const auto bind_args = [&](const KnownImage& img) {
        return std::vector<std::string>{"bind", img.image.string(), "tang", config, "--passphrase-file",
                                        img.passphrase_file.string()};
    };
    const std::vector<std::string> events = record_events(bind_args(copy_image(base, dir / "probe.img")));
    const std::size_t add = event_index(events, "crypt_keyslot_add_by_key");
    REQUIRE(add > 0);
    // The first token write after the keyslot: the clevis token (the kill lands after the keyslot is on disk).
    std::size_t token_after_add = 0;
    for (std::size_t i = add; i < events.size() && token_after_add == 0; ++i)
        if (events[i] == "crypt_token_json_set") token_after_add = i + 1;
    REQUIRE(token_after_add > add);

    SUBCASE("the same bind again") {
        const KnownImage img = copy_image(base, dir / "bind.img");
        REQUIRE(run_hooked(bind_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(token_after_add)}}).exit_code == 128 + 9);
        // The window: keyslot 1 exists, no clevis token serves it; the build passphrase still opens keyslot 0.
        CHECK(keyslot_ids(img.image) == std::vector<int>{0, 1});
        CHECK(clevis_slots(img.image).empty());
        CHECK(stock_opens(img.image, img.passphrase, 0));
        const RunResult rerun = run_cli(bind_args(img));
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        CHECK(rerun.out.find("finished an interrupted bind") != std::string::npos);
        check_bound_once(img);
    }
    SUBCASE("every write point of the bind, then the same bind again") {
        for (std::size_t kill_at = 1; kill_at <= events.size(); kill_at += stride(3)) {
            CAPTURE(kill_at);
            CAPTURE(events[kill_at - 1]);
            const KnownImage img = copy_image(base, dir / "each.img");
            REQUIRE(run_hooked(bind_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(kill_at)}}).exit_code == 128 + 9);
            CHECK(luksdump_ok(img.image));
            CHECK(stock_opens(img.image, img.passphrase, 0));
            const RunResult rerun = run_cli(bind_args(img));
            CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
            // Killed after the token was written (during the proof): that binding stays and the rerun adds one.
            if (kill_at <= token_after_add) check_bound_once(img);
            for (const auto& [id, token] : tokens_of(img.image)) CHECK(token.first == "clevis");
            fs::remove(img.image);
        }
    }
    SUBCASE("unbind and regen settle it too") {
        for (const std::string command : {"unbind", "regen"}) {
            CAPTURE(command);
            const KnownImage img = copy_image(base, dir / (command + ".img"));
            REQUIRE(run_hooked(bind_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(token_after_add)}}).exit_code == 128 + 9);
            const RunResult r = run_cli({command, img.image.string(), "-s", "1"});
            CHECK_MESSAGE(r.exit_code == 0, r.err);
            if (command == "unbind") {
                CHECK(keyslot_ids(img.image) == std::vector<int>{0});
                CHECK(tokens_of(img.image).empty());
            } else {
                check_bound_once(img);
            }
        }
    }
    SUBCASE("Tang down at the rerun: nothing is removed; unbind of that keyslot rolls the bind back") {
        const KnownImage img = copy_image(base, dir / "down.img");
        REQUIRE(run_hooked(bind_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(token_after_add)}}).exit_code == 128 + 9);
        const std::string before = header_json(img.image);
        tang.stop();
        const RunResult rerun = run_cli(bind_args(img));
        CHECK(rerun.exit_code != 0);
        CHECK(rerun.err.find("interrupted bind") != std::string::npos);
        CHECK(header_json(img.image) == before);  // the record still holds the way to keyslot 1's passphrase
        const RunResult unbind = run_cli({"unbind", img.image.string(), "-s", "1"});
        CHECK_MESSAGE(unbind.exit_code == 0, unbind.err);
        CHECK(keyslot_ids(img.image) == std::vector<int>{0});
        CHECK(tokens_of(img.image).empty());
        tang.start();
    }
    SUBCASE("a keyslot added by someone else into the recorded slot is never touched") {
        // Killed before bind's keyslot: the record names keyslot 1, which stock cryptsetup then takes.
        const KnownImage img = copy_image(base, dir / "other.img");
        REQUIRE(run_hooked(bind_args(img), {{"LUKSFORGE_HOOK_KILL", std::to_string(add)}}).exit_code == 128 + 9);
        const fs::path other = dir / "other.pass";
        write_file(other, "someone else's passphrase");
        run_ok({"cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file",
                img.passphrase_file.string(), "--key-slot", "1", img.image.string(), other.string()});
        const RunResult rerun = run_cli(bind_args(img));
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        CHECK(stock_opens(img.image, "someone else's passphrase", 1));
        CHECK(clevis_slots(img.image) == std::vector<int>{2});
        CHECK(tokens_of(img.image).size() == 1);
    }
}
