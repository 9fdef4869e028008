// Red Hat's defaults: LUKS2 volumes with the 16 KiB of metadata (12 KiB of JSON) that anaconda and
// `cryptsetup luksFormat` always make, and the README's policy, sss 2 of 3 Tang servers (real ones). Bound in a
// kickstart's %post by stock `clevis luks bind` (build passphrase kept, as Red Hat documents it) or as the
// project's kickstarts do (build passphrase removed, so seal gets the passphrase the binding recovers): seal,
// stamp, bind and regen work, seal holding one Clevis token at a time; seal killed at every step and rerun
// (recovering the passphrase again as lmc-postbuild.py does) finishes and leaves no helper token; the header
// never holds more JSON than `policy check` says; and 5 servers are refused before anything is written.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>
#include <luksforge/policy.hpp>

#include <jansson.h>

#include <cctype>
#include <memory>
#include <set>

using namespace luksforge;
using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kBuild = "build passphrase from the kickstart";

struct Servers {
    std::vector<std::unique_ptr<test::TangServer>> tang;
    explicit Servers(int n) {
        for (int i = 0; i < n; ++i) tang.push_back(std::make_unique<test::TangServer>());
    }
    // The policy and the same binding as stock clevis config (advertisements as files, as the runtime ships them).
    // Pinned and with the advertisements as files (as the runtime template ships them): measured exactly, offline.
    std::string policy(int threshold, const fs::path& dir) const {
        std::string text = "threshold = " + std::to_string(threshold) + "\n";
        for (std::size_t i = 0; i < tang.size(); ++i)
            text += "\n[[tang]]\nurl = \"" + tang[i]->url() + "\"\nthp = \"" + tang[i]->thumbprint() + "\"\nadv = \"" +
                    (dir / ("adv-" + std::to_string(i) + ".jws")).string() + "\"\n";
        return text;
    }
    std::string clevis_config(int threshold, const fs::path& dir) const {
        std::string servers;
        for (std::size_t i = 0; i < tang.size(); ++i) {
            const fs::path adv = dir / ("adv-" + std::to_string(i) + ".jws");
            write_file(adv, tang[i]->advertisement());
            servers += std::string(i ? "," : "") + "{\"url\":\"" + tang[i]->url() + "\",\"adv\":\"" + adv.string() + "\"}";
        }
        return "{\"t\":" + std::to_string(threshold) + ",\"pins\":{\"tang\":[" + servers + "]}}";
    }
};

struct Env {
    TempDir dir;
    Servers servers;
    fs::path policy, build_file;
    std::string clevis_config;
    explicit Env(int n = 3, int threshold = 2) : servers(n) {
        clevis_config = servers.clevis_config(threshold, dir.path());  // writes the advertisement files
        policy = dir / "policy.toml";
        write_file(policy, servers.policy(threshold, dir.path()));
        build_file = dir / "build.pass";
        write_file(build_file, kBuild);
    }
    // Like anaconda's `part --encrypted --luks-version=luks2`: cryptsetup's default header (16 KiB metadata), an
    // argon2id build keyslot (its cost lowered: the JSON is the same size).
    fs::path formatted(const std::string& name) {
        const fs::path image = dir / name;
        make_sparse_file(image, 48 * kMiB);
        run_ok({"cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-memory", "32768",
                "--iter-time", "100", "--key-file", build_file.string(), image.string()});
        return image;
    }
    // The kickstart's %post as Red Hat documents it: stock `clevis luks bind` (the build keyslot stays).
    void stock_bind(const fs::path& image) {
        run_ok({"clevis", "luks", "bind", "-y", "-k", build_file.string(), "-d", image.string(), "sss", clevis_config});
    }
};

std::string json_text(const fs::path& image) {
    const std::string area = read_file_bytes(image, 4096, 12288);
    return area.substr(0, area.find('\0'));
}

struct Header {
    std::set<int> keyslots;
    std::vector<std::pair<std::string, std::set<int>>> tokens;  // type, keyslots
    std::size_t json_bytes = 0;
};

Header header(const fs::path& image) {
    Header h;
    const std::string json = json_text(image);
    h.json_bytes = json.size();
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE(root != nullptr);
    const char* key = nullptr;
    json_t* value = nullptr;
    json_object_foreach(json_object_get(root, "keyslots"), key, value) {
        if (std::string(json_string_value(json_object_get(value, "type")) ?: "") != "reencrypt") h.keyslots.insert(std::stoi(key));
    }
    json_object_foreach(json_object_get(root, "tokens"), key, value) {
        std::set<int> slots;
        std::size_t i = 0;
        json_t* slot = nullptr;
        json_array_foreach(json_object_get(value, "keyslots"), i, slot) slots.insert(std::stoi(json_string_value(slot)));
        h.tokens.emplace_back(json_string_value(json_object_get(value, "type")), slots);
    }
    json_decref(root);
    return h;
}

// What lmc-postbuild.py does without --build-passphrase-file: recover the passphrase of the (first) binding.
fs::path recovered_passphrase(const fs::path& image, const fs::path& out) {
    const RunResult list = run({"clevis", "luks", "list", "-d", image.string()});
    REQUIRE_MESSAGE(!list.out.empty(), list.err);
    const std::string slot = list.out.substr(0, list.out.find(':'));
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", slot});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    write_file(out, pass.out);
    return out;
}

// Sealed: one keyslot, one clevis token on it and nothing else, opened by stock clevis; the build passphrase gone.
void check_sealed(const fs::path& image) {
    const Header h = header(image);
    REQUIRE(h.keyslots.size() == 1);
    REQUIRE(h.tokens.size() == 1);
    CHECK(h.tokens[0].first == "clevis");
    CHECK(h.tokens[0].second == h.keyslots);
    const int slot = *h.keyslots.begin();
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", std::to_string(slot)});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), "--key-file", "-",
               image.string()},
              pass.out)
              .exit_code == 0);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", image.string()}, kBuild).exit_code != 0);
}

std::size_t policy_token_bytes(const fs::path& policy) {
    return Policy::load(policy).estimate_token().token_bytes;
}

}  // namespace

TEST_CASE("policy check: 2 of 3 fits 16 KiB for seal and stamp; 3 of 6 does not, and says at most 5 fit") {
    Env three;
    RunResult ok = run_cli({"policy", "check", three.policy.string(), "--metadata-size", "16K"});
    CHECK_MESSAGE(ok.exit_code == 0, ok.err);
    CHECK(ok.out.find("seal fits") != std::string::npos);
    CHECK(ok.out.find("stamp fits") != std::string::npos);

    Env six(6, 3);
    RunResult refused = run_cli({"policy", "check", six.policy.string(), "--metadata-size", "16K"});
    CHECK(refused.exit_code == 7);
    CHECK(refused.out.find("seal needs") != std::string::npos);
    CHECK(refused.out.find("at most 5 such servers fit") != std::string::npos);
    // Without a size to meet the policy is valid (format --policy would reserve 32 KiB), and says so.
    RunResult plain = run_cli({"policy", "check", six.policy.string()});
    CHECK(plain.exit_code == 0);
    CHECK(plain.out.find("seal does not fit") != std::string::npos);
}

TEST_CASE("the most servers policy check lets through (3 of 5) really seal and stamp on 16 KiB") {
    Env env(5, 3);
    RunResult check = run_cli({"policy", "check", env.policy.string(), "--metadata-size", "16K"});
    REQUIRE_MESSAGE(check.exit_code == 0, check.out << check.err);
    CHECK_MESSAGE(check.out.find("at most 5 such Tang servers fit") != std::string::npos, check.out);
    const fs::path image = env.formatted("five.img");
    env.stock_bind(image);  // as Red Hat's documented %post leaves it: build passphrase kept
    RunResult sealed = run_cli({"seal", image.string(), "--policy", env.policy.string(), "--build-passphrase-file",
                                env.build_file.string(), "--no-ledger", "-q"});
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    check_sealed(image);
    for (const bool libcryptsetup : {false, true}) {
        CAPTURE(libcryptsetup);
        std::vector<std::string> args = {"stamp", image.string(), "--count", "1", "--out", (env.dir / "out").string(),
                                         "--policy", env.policy.string(), "--ledger", (env.dir / "ledger.db").string()};
        if (libcryptsetup) args.push_back("--libcryptsetup");
        RunResult stamped = run_cli(args);
        REQUIRE_MESSAGE(stamped.exit_code == 0, stamped.err);
    }
    for (const char* name : {"five-0001.img", "five-0002.img"}) check_sealed(env.dir / "out" / name);
}

TEST_CASE("stock clevis bind in %post, build passphrase kept: seal and stamp on 16 KiB") {
    Env env;
    const fs::path image = env.formatted("stock.img");
    env.stock_bind(image);
    REQUIRE(header(image).tokens.size() == 1);
    RunResult sealed = run_cli({"seal", image.string(), "--policy", env.policy.string(), "--build-passphrase-file",
                                env.build_file.string(), "--no-ledger", "-q"});
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    check_sealed(image);

    RunResult stamped = run_cli({"stamp", image.string(), "--count", "2", "--out", (env.dir / "out").string(),
                                 "--policy", env.policy.string(), "--ledger", (env.dir / "ledger.db").string()});
    REQUIRE_MESSAGE(stamped.exit_code == 0, stamped.err);
    for (const char* name : {"stock-0001.img", "stock-0002.img"}) check_sealed(env.dir / "out" / name);
    // The libcryptsetup data path too: re-encrypted copy, new token in place of the inherited one.
    RunResult fallback = run_cli({"stamp", image.string(), "--count", "1", "--out", (env.dir / "out").string(),
                                  "--policy", env.policy.string(), "--ledger", (env.dir / "ledger.db").string(),
                                  "--libcryptsetup"});
    REQUIRE_MESSAGE(fallback.exit_code == 0, fallback.err);
    check_sealed(env.dir / "out" / "stock-0003.img");
}

TEST_CASE("project kickstart (%post bound, build passphrase removed): seal killed at every step, rerun finishes") {
    Env env;
    const fs::path base = env.formatted("base.img");
    env.stock_bind(base);
    run_ok({"cryptsetup", "luksRemoveKey", "--batch-mode", "--key-file", env.build_file.string(), base.string()});
    const std::size_t peak_allowed = seal_header_fit(16 << 10, policy_token_bytes(env.policy)).needed;

    std::vector<std::string> steps = seal_crash_points();
    steps.push_back("");  // and once without a crash
    for (const std::string& step : steps) {
        CAPTURE(step);
        const fs::path image = env.dir / ("crash-" + step + ".img");
        run_ok({"cp", "--sparse=always", base.string(), image.string()});
        const fs::path pass = recovered_passphrase(image, env.dir / "recovered.pass");
        if (!step.empty()) {
            ::setenv("LUKSFORGE_CRASH_AT", step.c_str(), 1);
            RunResult crashed = run_cli({"seal", image.string(), "--policy", env.policy.string(),
                                         "--build-passphrase-file", pass.string(), "--no-ledger", "-q"});
            ::unsetenv("LUKSFORGE_CRASH_AT");
            CHECK_MESSAGE(crashed.exit_code == 128 + 9, crashed.err);
            // Never more JSON than the room policy check counts on.
            CHECK(header(image).json_bytes <= peak_allowed);
        }
        // The rerun gets its passphrase the same way: from whichever binding the image carries now.
        const fs::path again = recovered_passphrase(image, env.dir / "recovered-again.pass");
        RunResult rerun = run_cli({"seal", image.string(), "--policy", env.policy.string(), "--build-passphrase-file",
                                   again.string(), "--no-ledger", "-q"});
        REQUIRE_MESSAGE(rerun.exit_code == 0, rerun.err);
        check_sealed(image);  // also: no luksforge-seal token is left
        fs::remove(image);
    }
}

TEST_CASE("too big for 16 KiB: 6 servers bound in %post or by hand, seal and stamp refuse up front") {
    {
        // Stock clevis fits one binding of 6 servers; seal would need the re-encryption's room besides it.
        Env env(6, 3);
        const fs::path image = env.formatted("six-stock.img");
        env.stock_bind(image);
        const std::string before = read_file_bytes(image, 0, 16 * kMiB);
        RunResult seal = run_cli({"seal", image.string(), "--policy", env.policy.string(), "--build-passphrase-file",
                                  env.build_file.string(), "--no-ledger", "-q"});
        CHECK(seal.exit_code == 7);
        CHECK_MESSAGE(seal.err.find("at most 5") != std::string::npos, seal.err);
        CHECK(read_file_bytes(image, 0, 16 * kMiB) == before);
    }
    {
        // A base bound to 6 servers (one binding fits, as with stock Clevis): the one-pass stamp makes each
        // instance's header apart and fits; stamping by libcryptsetup re-encryption would not, and says so.
        Env env(6, 3);
        const fs::path image = env.formatted("six.img");
        RunResult bound = run_cli({"bind", image.string(), "--policy", env.policy.string(), "--passphrase-file",
                                   env.build_file.string()});
        REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
        run_ok({"cryptsetup", "luksRemoveKey", "--batch-mode", "--key-file", env.build_file.string(), image.string()});
        const std::string before = read_file_bytes(image, 0, 16 * kMiB);
        RunResult stamp = run_cli({"stamp", image.string(), "--count", "1", "--out", (env.dir / "out").string(),
                                   "--policy", env.policy.string(), "--ledger", (env.dir / "ledger.db").string(),
                                   "--libcryptsetup"});
        CHECK(stamp.exit_code == 7);
        CHECK_MESSAGE(stamp.err.find("at most 5") != std::string::npos, stamp.err);
        CHECK(read_file_bytes(image, 0, 16 * kMiB) == before);
        CHECK((!fs::exists(env.dir / "out") || fs::is_empty(env.dir / "out")));
        RunResult one_pass = run_cli({"stamp", image.string(), "--count", "1", "--out", (env.dir / "out").string(),
                                      "--policy", env.policy.string(), "--ledger", (env.dir / "ledger.db").string()});
        REQUIRE_MESSAGE(one_pass.exit_code == 0, one_pass.err);
        check_sealed(env.dir / "out" / "six-0001.img");
    }
}

TEST_CASE("bind and regen in place on 16 KiB with 2 of 3") {
    Env env;
    const fs::path image = env.formatted("bind.img");
    RunResult bound = run_cli({"bind", image.string(), "--policy", env.policy.string(), "--passphrase-file",
                               env.build_file.string()});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    Header h = header(image);
    REQUIRE(h.tokens.size() == 1);
    const std::set<int> clevis_slot = h.tokens[0].second;
    // A second binding of this size does not fit: refused before anything is written.
    const std::string before = read_file_bytes(image, 0, 16 * kMiB);
    RunResult second = run_cli({"bind", image.string(), "--policy", env.policy.string(), "--passphrase-file",
                                env.build_file.string()});
    CHECK(second.exit_code == 7);
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == before);
    // Regen after every server rotated its keys: in place, one token at a time.
    for (auto& t : env.servers.tang) t->rotate();
    RunResult regen = run_cli({"regen", image.string(), "--slot", std::to_string(*clevis_slot.begin())});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    h = header(image);
    REQUIRE(h.tokens.size() == 1);
    CHECK(h.tokens[0].second == clevis_slot);
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", std::to_string(*clevis_slot.begin())});
    CHECK_MESSAGE(pass.exit_code == 0, pass.err);
}
