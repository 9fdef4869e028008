// Clevis's own upstream LUKS2 tests (latchset/clevis, src/luks/tests/*-luks2 and the pin tests they use) read as
// the specification of what luksforge's bind/pass/unlock/list/unbind/regen must do. Each TEST_CASE names the
// upstream test whose behaviour it checks; the code is luksforge's own (C++ against a real Tang on 127.0.0.1,
// stock clevis 19 and cryptsetup on the other side), not a port of upstream's shell. Where luksforge
// deliberately differs (docs/cli.md, "Differences from Clevis"), the test checks luksforge's documented
// behaviour and says so. The last cases cover issue 18's parity items: scheme-less URLs, advertisement-file
// limits and precise error classes.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/luks.hpp>

#include <jansson.h>
#include <linux/keyctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <string>

using namespace luksforge;
using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kDefaultPass = "just-some-test-password-here";  // upstream's DEFAULT_PASS role

struct Device {
    TempDir dir;
    fs::path path = dir / "luks2-device";
    fs::path pass_file = dir / "pass";
    // new_device / new_device_hash: LUKS2, pbkdf2 at 1000 iterations, 512-bit key, a given hash.
    explicit Device(const std::string& hash = "sha256", const std::string& pass = kDefaultPass) {
        make_sparse_file(path, 32 * kMiB);
        write_file(pass_file, pass);
        run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--hash", hash, "--pbkdf", "pbkdf2",
                "--pbkdf-force-iterations", "1000", "--key-size", "512", path.string(), "--key-file",
                pass_file.string()});
    }
    // luksDump without the epoch (a write that was rolled back bumps it).
    std::string dump() const {
        std::string out = run_ok({"cryptsetup", "luksDump", path.string()});
        const std::size_t epoch = out.find("Epoch:");
        if (epoch != std::string::npos) out.erase(epoch, out.find('\n', epoch) - epoch);
        return out;
    }
};

std::string json_field(const std::string& json, const char* key) {
    json_error_t error;
    json_t* root = json_loads(json.c_str(), JSON_DECODE_ANY, &error);
    REQUIRE_MESSAGE(root != nullptr, json);
    const json_t* v = json_object_get(root, key);
    std::string out;
    if (json_is_string(v)) {
        out = json_string_value(v);
    } else if (v) {
        char* text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        out = text;
        std::free(text);
    }
    json_decref(root);
    return out;
}

// The hash of keyslot `slot` as luksDump shows it.
std::string keyslot_hash(const Device& dev, int slot) {
    const std::string dump = dev.dump();
    const std::size_t at = dump.find("\n  " + std::to_string(slot) + ": luks2");
    REQUIRE(at != std::string::npos);
    const std::size_t hash = dump.find("Hash:", at);
    REQUIRE(hash != std::string::npos);
    std::size_t start = dump.find_first_not_of(" \t", hash + 5);
    return dump.substr(start, dump.find('\n', start) - start);
}

bool opens(const Device& dev, int slot, const std::string& pass) {
    return run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), dev.path.string(),
                "--key-file", "-"},
               pass)
               .exit_code == 0;
}

// The advertisement file tang_create_adv / tang_get_adv leave for offline binds.
fs::path adv_file(const Device& dev, const TangServer& tang) {
    const fs::path file = dev.dir / "adv.jws";
    write_file(file, tang.advertisement());
    return file;
}

std::string offline(const std::string& url, const fs::path& adv) {
    return R"({"url":")" + url + R"(","adv":")" + adv.string() + R"("})";
}

std::string pinned(const TangServer& tang) {
    return R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
}

RunResult bind_cli(const Device& dev, const std::string& pin, const std::string& config,
               std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"bind", dev.path.string(), pin, config, "--passphrase-file", dev.pass_file.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
}

std::set<int> used_slots(const Device& dev) {
    const Volume volume = Volume::open(dev.path, Volume::Access::read_only);
    std::set<int> ids;
    for (const Keyslot& k : volume.keyslots()) ids.insert(k.id);
    return ids;
}

void remove_rotated_keys(const TangServer& tang) {
    for (const auto& entry : fs::directory_iterator(tang.key_dir()))
        if (entry.path().filename().string().front() == '.') fs::remove(entry.path());
}

}  // namespace

TEST_CASE("bind-luks2: -t puts the token at the given id; an empty existing passphrase works") {
    TangServer tang;
    Device dev;
    REQUIRE(bind_cli(dev, "tang", pinned(tang), {"-t", "5"}).exit_code == 0);
    CHECK(run({"cryptsetup", "token", "export", "--token-id", "5", dev.path.string()}).exit_code == 0);
    CHECK(run_cli({"bind", dev.path.string(), "tang", pinned(tang), "--passphrase-file", dev.pass_file.string(), "-t",
                   "5"})
              .exit_code == 7);  // the id is taken

    Device empty;
    write_file(empty.dir / "empty", "");
    REQUIRE(run({"cryptsetup", "luksChangeKey", "--batch-mode", "--force-password", "--pbkdf", "pbkdf2",
                 "--pbkdf-force-iterations", "1000", empty.path.string(), "--key-file", empty.pass_file.string(),
                 (empty.dir / "empty").string()})
                .exit_code == 0);
    const RunResult r = run_cli({"bind", empty.path.string(), "tang", pinned(tang), "--passphrase-file",
                                 (empty.dir / "empty").string()});
    CHECK_MESSAGE(r.exit_code == 0, r.err);
}

TEST_CASE("bind-hash-luks2 and regen-hash-luks2: a sha512 volume gets sha512 Clevis keyslots") {
    TangServer tang;
    Device dev("sha512");
    REQUIRE(keyslot_hash(dev, 0) == "sha512");
    REQUIRE(bind_cli(dev, "tang", offline(tang.url(), adv_file(dev, tang))).exit_code == 0);
    CHECK(keyslot_hash(dev, 1) == "sha512");
    REQUIRE(run({"cryptsetup", "luksRemoveKey", "--batch-mode", dev.path.string(), dev.pass_file.string()}).exit_code ==
            0);
    const std::string old_key = run_ok({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "1"});
    const RunResult regen = run_cli({"regen", dev.path.string(), "--slot", "1", "-y"});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(run_ok({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "1"}) != old_key);
    CHECK(keyslot_hash(dev, 1) == "sha512");
}

TEST_CASE("bind-wrong-pass-luks2: a wrong existing passphrase fails the bind") {
    TangServer tang;
    Device dev;
    const std::string before = dev.dump();
    CHECK(run_cli({"bind", dev.path.string(), "tang", pinned(tang), "--passphrase-file", "-"}, "wrong-passphrase")
              .exit_code == 3);
    CHECK(dev.dump() == before);
}

TEST_CASE("bind-luks2-ext-token: -e binds with an existing luks2-keyring token; -e with a passphrase is refused") {
    TangServer tang;
    const std::string pass = "123exttokenid_";
    Device dev("sha256", pass);
    const std::string description = "luksforge-test-" + std::to_string(::getpid());
    const long key = ::syscall(SYS_add_key, "user", description.c_str(), pass.data(), pass.size(),
                               KEY_SPEC_SESSION_KEYRING);
    const int add_key_errno = errno;
    // Root on Debian always has a session keyring: a failure here is a broken test host, not a reason to pass.
    REQUIRE_MESSAGE(key >= 0, "add_key(\"user\", \"" << description << "\") into the session keyring failed ("
                                                     << std::string(std::strerror(add_key_errno))
                                                     << "): -e with a luks2-keyring token cannot be tested");
    REQUIRE(run({"cryptsetup", "token", "add", "--token-id", "5", "--key-description", description,
                 dev.path.string()})
                .exit_code == 0);
    const RunResult r = run_cli({"bind", dev.path.string(), "-e", "5", "tang", pinned(tang)});
    CHECK_MESSAGE(r.exit_code == 0, r.err);
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code == 0);
    // -e with a clevis token works too: its recovered passphrase opens the volume.
    CHECK(run_cli({"bind", dev.path.string(), "-e", "0", "tang", pinned(tang)}).exit_code == 0);
    CHECK(run_cli({"bind", dev.path.string(), "-e", "5", "--passphrase-file", dev.pass_file.string(), "tang",
                   pinned(tang)})
              .exit_code == 2);
    ::syscall(SYS_keyctl, KEYCTL_INVALIDATE, key);
}

TEST_CASE("list-tang, list-sss-tang, list-recursive, list-multiple-slots (-luks2): configs and list -p") {
    TangServer tang;
    Device dev;
    const fs::path adv = adv_file(dev, tang);
    // Upstream binds to placeholder URLs with an offline advertisement: no server to prove the binding through,
    // so luksforge needs --no-verify for these (a documented difference).
    const std::string tang_cfg = offline("ADDR", adv);
    std::string five;
    for (int i = 1; i <= 5; ++i) five += std::string(i > 1 ? "," : "") + offline("ADDR" + std::to_string(i), adv);
    const std::string sss_cfg = R"({"t":2,"pins":{"tang":[)" + five + "]}}";
    const std::string recursive = R"({"t":1,"pins":{"sss":{"t":1,"pins":{"sss":{"t":1,"pins":{"tang":[)" + tang_cfg +
                                  "]}}}}}}";
    CHECK(bind_cli(dev, "tang", tang_cfg).exit_code == 6);  // the proof fails: no server at ADDR
    REQUIRE(bind_cli(dev, "tang", tang_cfg, {"--no-verify", "--slot", "1"}).exit_code == 0);
    REQUIRE(bind_cli(dev, "null", "{}", {"--slot", "2"}).exit_code == 0);  // null: provable offline
    // Each upstream test uses a fresh device: three levels of sss with a whole advertisement in every tang
    // child do not fit a 16 KiB header next to five tang children.
    Device five_dev, recursive_dev;
    REQUIRE(bind_cli(five_dev, "sss", sss_cfg, {"--no-verify"}).exit_code == 0);
    REQUIRE(bind_cli(recursive_dev, "sss", recursive, {"--no-verify"}).exit_code == 0);

    std::string addr5;
    for (int i = 1; i <= 5; ++i) addr5 += std::string(i > 1 ? "," : "") + R"({"url":"ADDR)" + std::to_string(i) + "\"}";
    const std::string expected_sss = "1: sss '{\"t\":2,\"pins\":{\"tang\":[" + addr5 + "]}}'\n";
    const std::string expected_recursive =
        R"(1: sss '{"t":1,"pins":{"sss":{"t":1,"pins":{"sss":{"t":1,"pins":{"tang":[{"url":"ADDR"}]}}}}}}')" "\n";
    CHECK(run_cli({"list", dev.path.string()}).out == "1: tang '{\"url\":\"ADDR\"}'\n2: null '{}'\n");
    // Stock clevis 19 agrees on tang; it shows the null pin as unknown (upstream's newer list prints
    // "null '{}'", which luksforge follows).
    CHECK(run_ok({"clevis", "luks", "list", "-d", dev.path.string()}) ==
          "1: tang '{\"url\":\"ADDR\"}'\n2: unknown pin 'null'\n");
    for (const Device* d : {&five_dev, &recursive_dev}) {
        const std::string expected = d == &five_dev ? expected_sss : expected_recursive;
        CHECK(run_cli({"list", d->path.string()}).out == expected);
        CHECK(run_cli({"list", d->path.string(), "-s", "1"}).out == expected);
        CHECK(run_ok({"clevis", "luks", "list", "-d", d->path.string()}) == expected);
        CHECK(run_cli({"list", d->path.string(), "-p"}).out == "1: sss tang\n");
    }
    CHECK(run_cli({"list", dev.path.string(), "-p"}).out == "1: tang\n2: null\n");
    CHECK(run_cli({"list", dev.path.string(), "-p", "-s", "2"}).out == "2: null\n");
    // The null pin both ways with stock clevis 19: its pass opens ours, ours opens its.
    const RunResult null_pass = run_cli({"pass", dev.path.string(), "--slot", "2"});
    REQUIRE(null_pass.exit_code == 0);
    CHECK(run_ok({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "2"}) == null_pass.out);
    REQUIRE(run({"clevis", "luks", "bind", "-d", dev.path.string(), "-k", dev.pass_file.string(), "-s", "5", "null",
                 "{}"})
                .exit_code == 0);
    const RunResult theirs = run_cli({"pass", dev.path.string(), "--slot", "5"});
    REQUIRE_MESSAGE(theirs.exit_code == 0, theirs.err);
    CHECK(opens(dev, 5, theirs.out));
    // {"fail":true}: a null share that never decrypts, so the proof fails and nothing stays.
    CHECK(bind_cli(dev, "null", R"({"fail":true})").exit_code == 3);
}

TEST_CASE("pass-tang-luks2 and unlock-tang-luks2: pass opens its slot; rotation keeps, deletion ends unlocking") {
    TangServer tang;
    Device dev;
    const fs::path adv = adv_file(dev, tang);
    REQUIRE(bind_cli(dev, "tang", offline(tang.url(), adv)).exit_code == 0);
    const RunResult pass = run_cli({"pass", dev.path.string(), "--slot", "1"});
    REQUIRE(pass.exit_code == 0);
    CHECK(opens(dev, 1, pass.out));
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code == 0);
    tang.rotate();
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code == 0);
    remove_rotated_keys(tang);
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code != 0);
    write_file(adv, tang.advertisement());  // tang_get_adv: the new advertisement
    REQUIRE(bind_cli(dev, "tang", offline(tang.url(), adv)).exit_code == 0);
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code == 0);
}

TEST_CASE("regen-inplace-luks2: regen without rotation re-makes slot 1 in place with a new key") {
    TangServer tang;
    Device dev;
    REQUIRE(bind_cli(dev, "tang", offline(tang.url(), adv_file(dev, tang))).exit_code == 0);
    REQUIRE(run({"cryptsetup", "luksRemoveKey", "--batch-mode", dev.path.string(), dev.pass_file.string()}).exit_code ==
            0);
    REQUIRE(used_slots(dev) == std::set<int>{1});
    const std::string old_key = run_ok({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "1"});
    // The old binding's advertisement was offline (no thp): its signing key still vouches for /adv/<thp>.
    const RunResult regen = run_cli({"regen", dev.path.string(), "--slot", "1"});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    const std::string new_key = run_ok({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "1"});
    CHECK(new_key != old_key);
    CHECK(used_slots(dev) == std::set<int>{1});
    // Stock clevis luks regen works on what luksforge regenerated, and luksforge reads what it writes.
    CHECK(run({"clevis", "luks", "regen", "-q", "-d", dev.path.string(), "-s", "1"}).exit_code == 0);
    CHECK(run_cli({"pass", dev.path.string(), "--slot", "1"}).out != new_key);
    CHECK(run_cli({"unlock", dev.path.string(), "--slot", "1", "--test"}).exit_code == 0);
}

TEST_CASE("regen-not-inplace-luks2: old keys deleted, regen takes the existing passphrase, slot 1 unlocks again") {
    TangServer tang;
    Device dev;
    REQUIRE(bind_cli(dev, "tang", offline(tang.url(), adv_file(dev, tang)), {"--slot", "1"}).exit_code == 0);
    tang.rotate();
    remove_rotated_keys(tang);
    REQUIRE(used_slots(dev) == std::set<int>{0, 1});
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code != 0);
    // Clevis reads the passphrase from stdin and always trusts the server (-y); luksforge wants -y said.
    const RunResult regen = run_cli({"regen", dev.path.string(), "--slot", "1", "-y", "--passphrase-file", "-"},
                                    kDefaultPass);
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(run_cli({"unlock", dev.path.string(), "--slot", "1", "--test"}).exit_code == 0);
    CHECK(run({"clevis", "luks", "pass", "-d", dev.path.string(), "-s", "1"}).exit_code == 0);
}

TEST_CASE("unbind-luks2 and unbind-unbound-slot-luks2: a binding goes, other slots stay, unbound slots fail") {
    TangServer tang;
    Device dev;
    REQUIRE(bind_cli(dev, "tang", pinned(tang)).exit_code == 0);
    CHECK(run_cli({"unbind", dev.path.string(), "--slot", "1", "-f"}).exit_code == 0);
    CHECK(opens(dev, 0, kDefaultPass));
    CHECK(run_cli({"unbind", dev.path.string(), "--slot", "0", "-f"}).exit_code == 4);
    CHECK(opens(dev, 0, kDefaultPass));
    Device fresh;
    CHECK(run_cli({"unbind", fresh.path.string(), "--slot", "2"}).exit_code == 4);
}

TEST_CASE("assume-yes-luks2: -y binds tang and sss to an unpinned server; both unlock") {
    TangServer tang;
    Device dev;
    REQUIRE(run_cli({"bind", dev.path.string(), "-y", "tang", R"({"url":")" + tang.url() + R"("})",
                     "--passphrase-file", dev.pass_file.string()})
                .exit_code == 0);
    CHECK(run_cli({"unlock", dev.path.string(), "--test"}).exit_code == 0);
    Device sss;
    const std::string cfg =
        R"({"t":2, "pins": {"tang": [{"url": ")" + tang.url() + R"("}, {"url": ")" + tang.url() + R"("}]}})";
    REQUIRE(run_cli({"bind", sss.path.string(), "-y", "sss", cfg, "--passphrase-file", sss.pass_file.string()})
                .exit_code == 0);
    CHECK(run_cli({"unlock", sss.path.string(), "--test"}).exit_code == 0);
    CHECK(run({"clevis", "luks", "pass", "-d", sss.path.string(), "-s", "1"}).exit_code == 0);
}

TEST_CASE("bad-sss: an sss config with a malformed URL fails the bind (exit 7), nothing written") {
    Device dev;
    const std::string before = dev.dump();
    const RunResult r = bind_cli(dev, "sss", R"({"t":1, "pins":{"tang":[{"url":"foo bar"}]}})");
    CHECK(r.exit_code == 7);
    CHECK_MESSAGE(r.err.find("space or control character") != std::string::npos, r.err);
    CHECK(dev.dump() == before);
}

// ---- issue 18, item 7: LUKS1 with luksmeta (list-tang-luks1, pass-tang-luks1, unlock-tang-luks1) ---------

namespace {

// A 32 MiB LUKS1 volume (passphrase in `pass`) bound to `tang` by stock `clevis luks bind`: a luksmeta slot.
void luks1_bound_by_stock_clevis(const fs::path& dev, const fs::path& pass, const TangServer& tang) {
    make_sparse_file(dev, 32 * kMiB);
    write_file(pass, kDefaultPass);
    run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
            dev.string(), "--key-file", pass.string()});
    REQUIRE(run({"clevis", "luks", "bind", "-f", "-y", "-d", dev.string(), "-k", pass.string(), "tang",
                 R"({"url":")" + tang.url() + R"("})"})
                .exit_code == 0);
}

}  // namespace

TEST_CASE("LUKS1 bound by stock clevis (luksmeta): luksforge lists, passes, unlocks; writing is refused with a path that works") {
    TangServer tang;
    TempDir dir;
    const fs::path dev = dir / "luks1-device";
    const fs::path pass = dir / "pass";
    luks1_bound_by_stock_clevis(dev, pass, tang);
    const std::string listed = "1: tang '{\"url\":\"" + tang.url() + "\"}'\n";
    CHECK(run_ok({"clevis", "luks", "list", "-d", dev.string()}) == listed);
    CHECK(run_cli({"list", dev.string()}).out == listed);
    CHECK(run_cli({"list", dev.string(), "-p"}).out == "1: tang\n");
    const RunResult ours = run_cli({"pass", dev.string(), "--slot", "1"});
    REQUIRE_MESSAGE(ours.exit_code == 0, ours.err);
    CHECK(ours.out == run_ok({"clevis", "luks", "pass", "-d", dev.string(), "-s", "1"}));
    CHECK(run_cli({"unlock", dev.string(), "--test"}).exit_code == 0);
    tang.stop();
    CHECK(run_cli({"unlock", dev.string(), "--test", "--timeout", "1000"}).exit_code == 6);
    tang.start();

    // Writing is refused, naming the bound slots and the conversion path; following it works.
    const RunResult refused = run_cli({"bind", dev.string(), "tang", pinned(tang), "--passphrase-file", pass.string()});
    CHECK(refused.exit_code == 7);
    CHECK_MESSAGE(refused.err.find("luksmeta slots 1") != std::string::npos, refused.err);
    CHECK(refused.err.find("luksmeta nuke") != std::string::npos);
    CHECK(run_cli({"regen", dev.string(), "--slot", "1"}).exit_code == 7);
    CHECK(run_cli({"unbind", dev.string(), "--slot", "1"}).exit_code == 7);
    // Activation is refused too, and the message says exactly what works on LUKS1 and what does not.
    const RunResult activate = run_cli({"unlock", dev.string(), "--name", "luksforge-luks1-test"});
    CHECK(activate.exit_code == 7);
    for (const char* words : {"`list`, `pass`, `unlock --test` and `unlock --key-fd` work", "`unlock --name`",
                              "bind, regen and unbind", "cryptsetup open"})
        CHECK_MESSAGE(activate.err.find(words) != std::string::npos, activate.err);
    CHECK(activate.err.find("(list, pass, unlock)") == std::string::npos);
    CHECK(run({"cryptsetup", "convert", "--batch-mode", "--type", "luks2", dev.string()}).exit_code != 0);
    REQUIRE(run({"clevis", "luks", "unbind", "-f", "-d", dev.string(), "-s", "1"}).exit_code == 0);
    REQUIRE(run({"luksmeta", "nuke", "-f", "-d", dev.string()}).exit_code == 0);
    REQUIRE(run({"cryptsetup", "convert", "--batch-mode", "--type", "luks2", dev.string()}).exit_code == 0);
    const RunResult rebound = run_cli({"bind", dev.string(), "tang", pinned(tang), "--passphrase-file", pass.string()});
    CHECK_MESSAGE(rebound.exit_code == 0, rebound.err);
    CHECK(run({"clevis", "luks", "pass", "-d", dev.string(), "-s", "1"}).exit_code == 0);
}

// ---- issue 18 audit follow-up: LUKS1 volumes are audited, luksmeta bindings included -----------------------

namespace {

json_t* load_json(const std::string& text) {
    json_error_t error;
    json_t* root = json_loads(text.c_str(), 0, &error);
    REQUIRE_MESSAGE(root != nullptr, text);
    return root;
}

std::string str(const json_t* object, const char* key) {
    const json_t* v = json_object_get(object, key);
    return json_is_string(v) ? json_string_value(v) : std::string();
}

}  // namespace

TEST_CASE("audit on LUKS1 bound by stock clevis (luksmeta): listed with its binding, copies share one key") {
    TangServer tang;
    TempDir dir;
    const fs::path fleet = dir / "fleet";
    fs::create_directory(fleet);
    const fs::path dev = fleet / "luks1-a.img";
    const fs::path copy = fleet / "luks1-b.img";
    const fs::path pass = dir / "pass";
    luks1_bound_by_stock_clevis(dev, pass, tang);
    run_ok({"cp", "--sparse=always", dev.string(), copy.string()});

    const RunResult r = run_cli({"audit", fleet.string(), "--json", "--tang-key-dir", (dir / "none").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    json_t* report = load_json(r.out);
    CHECK_MESSAGE(json_array_size(json_object_get(report, "skipped")) == 0, r.out);
    CHECK(json_integer_value(json_object_get(report, "volumes_scanned")) == 2);
    CHECK(json_integer_value(json_object_get(report, "distinct_keys")) == 1);
    const json_t* group = json_array_get(json_object_get(report, "groups"), 0);
    CHECK(json_integer_value(json_object_get(group, "count")) == 2);
    CHECK(json_is_true(json_object_get(group, "flagged")));  // two images, one key: over the default limit of 1
    const std::string fingerprint = str(group, "fingerprint");
    CHECK(fingerprint.size() == 64);
    std::size_t i;
    json_t* member;
    json_array_foreach(json_object_get(group, "members"), i, member) {
        CAPTURE(str(member, "image"));
        CHECK(json_integer_value(json_object_get(member, "luks_version")) == 1);
        const json_t* bindings = json_object_get(member, "clevis");
        REQUIRE(json_array_size(bindings) == 1);
        const json_t* binding = json_array_get(bindings, 0);
        CHECK(json_integer_value(json_object_get(binding, "keyslot")) == 1);
        CHECK(str(binding, "pin") == "tang");
        CHECK(str(binding, "config") == R"({"url":")" + tang.url() + R"("})");
    }
    json_decref(report);

    const RunResult text = run_cli({"audit", fleet.string(), "--tang-key-dir", (dir / "none").string()});
    CHECK(text.out.find("SHARED " + fingerprint.substr(0, 16)) != std::string::npos);
    CHECK_MESSAGE(text.out.find(dev.string() + " (LUKS1)\n           clevis 1: tang '{\"url\":\"" + tang.url() +
                                "\"}'") != std::string::npos,
                  text.out);
    CHECK(text.out.find("skipped") == std::string::npos);

    // The LUKS1 fingerprint is the one the volume keeps once converted to LUKS2 (docs/cli.md).
    REQUIRE(run({"clevis", "luks", "unbind", "-f", "-d", copy.string(), "-s", "1"}).exit_code == 0);
    REQUIRE(run({"luksmeta", "nuke", "-f", "-d", copy.string()}).exit_code == 0);
    REQUIRE(run({"cryptsetup", "convert", "--batch-mode", "--type", "luks2", copy.string()}).exit_code == 0);
    CHECK(json_field(run_cli({"inspect", copy.string(), "--json"}).out, "fingerprint") == fingerprint);
}

// ---- issue 18, item 1: Tang URLs without a scheme mean http, as curl (and so Clevis) reads them -------------

TEST_CASE("scheme-less Tang URLs (host:port) both ways: luksforge binds them, and opens Clevis's") {
    TangServer tang;
    const std::string bare = "127.0.0.1:" + std::to_string(tang.port());
    Device ours;
    const RunResult r = bind_cli(ours, "tang", R"({"url":")" + bare + R"(","thp":")" + tang.thumbprint() + R"("})");
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(run_ok({"clevis", "luks", "list", "-d", ours.path.string()}) == "1: tang '{\"url\":\"" + bare + "\"}'\n");
    CHECK(opens(ours, 1, run_ok({"clevis", "luks", "pass", "-d", ours.path.string(), "-s", "1"})));

    Device theirs;
    REQUIRE(run({"clevis", "luks", "bind", "-y", "-d", theirs.path.string(), "-k", theirs.pass_file.string(), "tang",
                 R"({"url":")" + bare + R"("})"})
                .exit_code == 0);
    CHECK(run_cli({"unlock", theirs.path.string(), "--test"}).exit_code == 0);
    CHECK(run_cli({"pass", theirs.path.string(), "--slot", "1"}).exit_code == 0);
    CHECK(run_cli({"list", theirs.path.string()}).out == "1: tang '{\"url\":\"" + bare + "\"}'\n");
    tang.rotate();
    const RunResult regen = run_cli({"regen", theirs.path.string(), "--slot", "1"});
    CHECK_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(run_ok({"clevis", "luks", "list", "-d", theirs.path.string()}) == "1: tang '{\"url\":\"" + bare + "\"}'\n");
    CHECK(run({"clevis", "luks", "pass", "-d", theirs.path.string(), "-s", "1"}).exit_code == 0);
    // Other schemes stay refused, before anything is written.
    CHECK(bind_cli(ours, "tang", R"({"url":"ftp://127.0.0.1:1","thp":"x"})").exit_code == 7);
}

// ---- issue 18, item 4: offline advertisement files are read like network replies ---------------------------

TEST_CASE("advertisement files: regular files of at most 1 MiB only; /dev/zero, a FIFO, a directory fail fast") {
    Device dev;
    const std::string before = dev.dump();
    const fs::path fifo = dev.dir / "adv.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const fs::path big = dev.dir / "big.jws";
    make_sparse_file(big, 2 * kMiB);
    struct Case {
        std::string file, expected;
    };
    for (const Case& c : {Case{"/dev/zero", "not a regular file (a character device)"},
                          Case{fifo.string(), "not a regular file (a FIFO)"},
                          Case{dev.dir.path().string(), "not a regular file (a directory)"},
                          Case{big.string(), "larger than 1048576 bytes"}}) {
        CAPTURE(c.file);
        const auto start = std::chrono::steady_clock::now();
        const RunResult r = bind_cli(dev, "tang", offline("http://127.0.0.1:1", c.file));
        CHECK(r.exit_code == 7);
        CHECK_MESSAGE(r.err.find(c.expected) != std::string::npos, r.err);
        CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));  // never hangs on the FIFO
        CHECK(dev.dump() == before);
    }
    const fs::path policy = dev.dir / "policy.toml";
    write_file(policy, "[[tang]]\nurl = \"http://127.0.0.1:1\"\nadv = \"" + fifo.string() + "\"\n");
    const RunResult check = run_cli({"policy", "check", policy.string()});
    CHECK(check.exit_code == 7);
    CHECK_MESSAGE(check.out.find("not a regular file (a FIFO)") != std::string::npos, check.out);
}

// ---- issue 18, item 5: precise errors in the right exit class, never echoing unbounded input ----------------

namespace {

// The advertisement's JWK set with its first exchange key changed by `edit` (an offline, unsigned JWK set).
std::string edited_keys(const TangServer& tang, void (*edit)(json_t* exchange_key)) {
    const std::string payload = json_field(tang.advertisement(), "payload");
    const std::string keys = run_ok({"jose", "b64", "dec", "-i-"}, payload);
    json_error_t error;
    json_t* set = json_loads(keys.c_str(), 0, &error);
    REQUIRE(set != nullptr);
    std::size_t i;
    json_t* key;
    json_array_foreach(json_object_get(set, "keys"), i, key) {
        if (json_string_value(json_object_get(key, "alg")) == std::string("ECMR")) {
            edit(key);
            break;
        }
    }
    char* text = json_dumps(set, JSON_COMPACT);
    std::string out = text;
    std::free(text);
    json_decref(set);
    return out;
}

}  // namespace

TEST_CASE("bad exchange keys in an offline advertisement: exit 7 with what is wrong, not 'libjose error'") {
    TangServer tang;
    Device dev;
    const std::string before = dev.dump();
    const std::string off_curve = edited_keys(tang, [](json_t* k) {
        std::string x = json_string_value(json_object_get(k, "x"));
        x[10] = x[10] == 'A' ? 'B' : 'A';
        json_object_set_new(k, "x", json_string(x.c_str()));
    });
    const std::string short_x = edited_keys(tang, [](json_t* k) {
        std::string x = json_string_value(json_object_get(k, "x"));
        json_object_set_new(k, "x", json_string(x.substr(0, 40).c_str()));
    });
    for (const auto& [keys, expected] : {std::pair{off_curve, std::string("is not on P-521")},
                                         std::pair{short_x, std::string("bytes, P-521 needs 66")}}) {
        const RunResult r = bind_cli(dev, "tang", R"({"url":")" + tang.url() + R"(","adv":)" + keys + "}");
        CHECK(r.exit_code == 7);
        CHECK_MESSAGE(r.err.find(expected) != std::string::npos, r.err);
        CHECK(r.err.find("libjose") == std::string::npos);
        CHECK(dev.dump() == before);
    }
}

TEST_CASE("a /rec reply without coordinates is named as such; the bind rolls back (exit 6)") {
    TangServer tang;
    Device dev;
    BadServer no_xy(200, R"({"kty":"EC","crv":"P-521"})");
    const std::string before = dev.dump();
    const RunResult r = bind_cli(dev, "tang", R"({"url":")" + no_xy.url() + R"(","adv":)" + tang.advertisement() + "}");
    CHECK(r.exit_code == 6);
    CHECK_MESSAGE(r.err.find("has no \"x\" coordinate") != std::string::npos, r.err);
    CHECK(r.err.find("not on curve") == std::string::npos);
    CHECK(dev.dump() == before);
}

TEST_CASE("list says what is wrong with malformed and unknown-pin tokens; exit 0 as Clevis") {
    TangServer tang;
    Device dev;
    REQUIRE(bind_cli(dev, "tang", pinned(tang)).exit_code == 0);
    {
        Volume volume = Volume::open(dev.path);
        const int extra = volume.add_keyslot(kDefaultPass, "second", Pbkdf::pbkdf2_fast());
        volume.set_token(R"({"type":"clevis","keyslots":[")" + std::to_string(extra) + R"("],"jwe":{"protected":"bm90IGpzb24"}})");
        // An unknown pin, in a well-formed JWE header: {"clevis":{"pin":"tpm9","tpm9":{}}}.
        const std::string header = run_ok({"jose", "b64", "enc", "-I-"}, R"({"clevis":{"pin":"tpm9","tpm9":{}}})");
        const int third = volume.add_keyslot(kDefaultPass, "third", Pbkdf::pbkdf2_fast());
        volume.set_token(R"({"type":"clevis","keyslots":[")" + std::to_string(third) +
                         R"("],"jwe":{"protected":")" + header + R"(","encrypted_key":"","iv":"","ciphertext":"","tag":""}})");
    }
    const RunResult r = run_cli({"list", dev.path.string()});
    CHECK(r.exit_code == 0);
    CHECK(r.out == "1: tang '{\"url\":\"" + tang.url() + "\"}'\n3: unknown pin 'tpm9'\n");
    CHECK_MESSAGE(r.err.find("2: unreadable token 1:") != std::string::npos, r.err);
    CHECK(r.err.find("unknown ''") == std::string::npos);
    CHECK(run_ok({"clevis", "luks", "list", "-d", dev.path.string()}) ==
          "1: tang '{\"url\":\"" + tang.url() + "\"}'\n3: unknown pin 'tpm9'\n");
}

TEST_CASE("a 100 KB URL (about the most argv carries): refused (exit 7) with a short message") {
    Device dev;
    const std::string url = "http://" + std::string(100000, 'a');
    const RunResult r = bind_cli(dev, "tang", R"({"url":")" + url + R"(","thp":"x"})");
    CHECK(r.exit_code == 7);
    CHECK_MESSAGE(r.err.size() < 1000, r.err.size());
    CHECK(r.err.find("too long") != std::string::npos);
}

TEST_CASE("a policy file with a 3 MB url (or thp): policy check exits 7 with short messages") {
    TempDir dir;
    const std::string url = "http://" + std::string(3 * kMiB, 'a');
    const fs::path policy = dir / "policy.toml";
    // The url alone: "has neither thp nor adv" quotes it.
    write_file(policy, "[[tang]]\nurl = \"" + url + "\"\n");
    const RunResult one = run_cli({"policy", "check", policy.string()});
    CHECK(one.exit_code == 7);
    CHECK_MESSAGE(one.out.size() < 1000, one.out.substr(0, 2000));
    CHECK_MESSAGE(one.err.size() < 1000, one.err.substr(0, 2000));
    CHECK_MESSAGE(one.out.find("has neither thp nor adv") != std::string::npos, one.out.substr(0, 2000));
    CHECK(one.out.find("... (3145735 bytes)") != std::string::npos);  // the excerpt names the full length

    // Every other message quoting a url or thp: a bad thp, a duplicate url, a url that is not http(s).
    write_file(policy, "[[tang]]\nurl = \"" + url + "\"\nthp = \"" + std::string(3 * kMiB, 'b') +
                           "\"\n[[tang]]\nurl = \"" + url + "\"\nthp = \"x\"\n[[tang]]\nurl = \"ftp://" +
                           std::string(3 * kMiB, 'c') + "\"\nthp = \"x\"\n");
    const RunResult all = run_cli({"policy", "check", policy.string()});
    CHECK(all.exit_code == 7);
    std::size_t start = 0;
    while (start < all.out.size()) {
        const std::size_t end = std::min(all.out.find('\n', start), all.out.size());
        CHECK_MESSAGE(end - start < 1000, all.out.substr(start, 300));
        start = end + 1;
    }
    CHECK_MESSAGE(all.err.size() < 2000, all.err.substr(0, 2000));  // the summary repeats every problem
    for (const char* expected : {"is not a thumbprint", "duplicate Tang url", "must be an http:// or https:// URL"})
        CHECK_MESSAGE(all.out.find(expected) != std::string::npos, all.out.substr(0, 2000));
}
