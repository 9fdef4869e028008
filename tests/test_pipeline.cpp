// The image pipeline end to end, against a real Tang and stock Clevis/cryptsetup: seal a whole-disk GPT image
// (EFI + LUKS2 holding known data), kill -9 at every seal step and rerun, stamp unique instances and decrypt
// each one's data area independently (OpenSSL AES-XTS, plain64), clone under the ledger's limit, audit clones.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "dmcrypt_reference.hpp"
#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>

#include <jansson.h>
#include <openssl/evp.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

using namespace luksforge;
using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t kPlainBytes = 20 * kMiB;
const std::string kBuild = "build passphrase of the image pipeline";

// The facts of a candidate image the tests compare against.
struct Candidate {
    fs::path image;
    std::uint64_t offset = 0, size = 0;   // the LUKS2 partition
    std::string plain_sha256;             // of the first kPlainBytes of the decrypted data area
};

// A whole-disk GPT image: 4 MiB EFI partition + LUKS2 partition. The LUKS2 volume is made by
// `cryptsetup reencrypt --encrypt` over a partition that already holds known random data, so the data
// area carries that data encrypted under the build volume key.
Candidate make_candidate(const fs::path& image) {
    Candidate c;
    c.image = image;
    make_sparse_file(image, 48 * kMiB);
    run_ok({"sfdisk", "-q", image.string()},
           "label: gpt\nsize=4MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC3B8, name=EFI\n"
           "type=0FC63DAF-8483-4772-8E79-3D69E4C477E4, name=root\n");
    std::string table = run_ok({"sfdisk", "-d", image.string()});
    ImageProbe probe = probe_image(image);
    REQUIRE(probe.partitions.size() == 2);
    c.offset = probe.partitions[1].offset_bytes;
    c.size = probe.partitions[1].size_bytes;
    const fs::path plain = image.string() + ".plain";
    run_ok({"sh", "-c", "head -c " + std::to_string(kPlainBytes) + " /dev/urandom > '" + plain.string() +
                            "' && dd if='" + plain.string() + "' of='" + image.string() + "' bs=1M seek=" +
                            std::to_string(c.offset / kMiB) + " conv=notrunc status=none"});
    c.plain_sha256 = sha256_file(plain);
    fs::remove(plain);
    LoopDevice loop(image, c.offset, c.size);
    run_ok({"cryptsetup", "reencrypt", "--encrypt", "-q", "--type", "luks2", "--reduce-device-size", "16M", "--pbkdf",
            "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", loop.path().string()},
           kBuild);
    return c;
}

Candidate copy_candidate(const Candidate& from, const fs::path& to) {
    run_ok({"cp", "--sparse=always", from.image.string(), to.string()});
    Candidate c = from;
    c.image = to;
    return c;
}

// SHA-256 of the first kPlainBytes of the data area decrypted with `key`.
std::string decrypted_sha256(const fs::path& device, const SecretBuffer& key) {
    Volume volume = Volume::open(device, Volume::Access::read_only);
    Inspection info = volume.inspect();
    std::string cipher = read_file_bytes(device, info.data_offset_bytes, kPlainBytes);
    REQUIRE(cipher.size() == kPlainBytes);
    return sha256_hex(decrypt_xts_plain64(cipher, key, info.sector_size));
}

struct Env {
    TempDir dir;
    test::TangServer tang;
    fs::path policy, build_file, ledger;
    Env() {
        policy = dir / "policy.toml";
        write_file(policy, "max_instances_per_key = 1\n[[tang]]\nurl = \"" + tang.url() + "\"\nthp = \"" +
                               tang.thumbprint() + "\"\n");
        build_file = dir / "build.pass";
        write_file(build_file, kBuild);
        ledger = dir / "ledger.db";
    }
    RunResult seal(const fs::path& image, const std::vector<std::string>& extra = {}) {
        std::vector<std::string> args{"seal", image.string(), "--policy", policy.string(), "--build-passphrase-file",
                                      build_file.string(), "--ledger", ledger.string(), "-q"};
        args.insert(args.end(), extra.begin(), extra.end());
        return run_cli(args);
    }
    // Seal with the test-only hook that SIGKILLs the process at `step`, and check that it really fired there.
    void seal_killed_at(const fs::path& image, const std::string& step) {
        ::setenv("LUKSFORGE_CRASH_AT", step.c_str(), 1);
        const RunResult crashed = seal(image);
        ::unsetenv("LUKSFORGE_CRASH_AT");
        CHECK_MESSAGE(crashed.exit_code == 128 + 9, crashed.err);  // 128 + SIGKILL
    }
};

bool build_opens(const fs::path& device) {
    return run({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", device.string()}, kBuild).exit_code == 0;
}

// The clevis keyslots stock `clevis luks list` shows.
std::vector<int> clevis_slots(const fs::path& device) {
    RunResult list = run({"clevis", "luks", "list", "-d", device.string()});
    std::vector<int> slots;
    std::size_t pos = 0;
    std::string out = list.out;
    while (pos < out.size()) {
        std::size_t end = out.find('\n', pos);
        std::string line = out.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
        if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) slots.push_back(std::stoi(line));
        if (end == std::string::npos) break;
        pos = end + 1;
    }
    return slots;
}

// Stock `clevis luks pass` recovers a passphrase that stock `cryptsetup --test-passphrase` accepts for the slot.
bool stock_clevis_opens(const fs::path& device, int slot) {
    RunResult pass = run({"clevis", "luks", "pass", "-d", device.string(), "-s", std::to_string(slot)});
    if (pass.exit_code != 0 || pass.out.empty()) return false;
    return run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), "--key-file", "-",
                device.string()},
               pass.out)
               .exit_code == 0;
}

bool any_clevis_opens(const fs::path& device) {
    for (int slot : clevis_slots(device))
        if (stock_clevis_opens(device, slot)) return true;
    return false;
}

std::string dump(const fs::path& device) { return run_ok({"cryptsetup", "luksDump", device.string()}); }

json_t* load_json(const std::string& text) {
    json_error_t error;
    json_t* json = json_loads(text.c_str(), 0, &error);
    REQUIRE_MESSAGE(json != nullptr, "bad JSON: " << text);
    return json;
}

std::string str(json_t* object, const char* key) {
    const char* value = json_string_value(json_object_get(object, key));
    return value ? value : "";
}

void check_no_loop_left(const fs::path& image) { CHECK(run_ok({"losetup", "-j", image.string()}).empty()); }

// Sealed state as stock tools see it: exactly one keyslot, a working clevis binding, no build passphrase,
// no seal state token, the known data under a new volume key.
void check_sealed(const Candidate& c, const std::string& build_fingerprint) {
    LoopDevice loop(c.image, c.offset, c.size);
    CHECK_FALSE(build_opens(loop.path()));
    std::vector<int> slots = clevis_slots(loop.path());
    REQUIRE(slots.size() == 1);
    CHECK(stock_clevis_opens(loop.path(), slots[0]));
    std::string header = dump(loop.path());
    CHECK(header.find("luksforge-seal") == std::string::npos);
    Volume volume = Volume::open(loop.path(), Volume::Access::read_only);
    CHECK(volume.keyslots().size() == 1);
    CHECK(volume.fingerprint() != build_fingerprint);
    CHECK_FALSE(volume.inspect().reencryption_in_progress);
    clevis::Unlocked unlocked = clevis::unlock(volume);
    SecretBuffer key = volume.volume_key(unlocked.passphrase.view(), unlocked.keyslot);
    CHECK(decrypted_sha256(loop.path(), key) == c.plain_sha256);
}

std::string fingerprint_of(const Candidate& c) {
    AttachedTarget attached = AttachedTarget::attach(select_luks_target(c.image), true);
    return Volume::open(attached.device(), Volume::Access::read_only).fingerprint();
}

}  // namespace

TEST_CASE("seal a whole-disk GPT image: stock clevis opens it, the build passphrase no longer does") {
    Env env;
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string before = fingerprint_of(c);
    {
        // The fixture is what it claims: the build key decrypts the known data.
        LoopDevice loop(c.image, c.offset, c.size);
        CHECK(build_opens(loop.path()));
        Volume volume = Volume::open(loop.path(), Volume::Access::read_only);
        CHECK(decrypted_sha256(loop.path(), volume.volume_key(kBuild)) == c.plain_sha256);
    }

    const fs::path report_file = env.dir / "report.json";
    RunResult sealed = env.seal(c.image, {"--report", report_file.string()});
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    check_no_loop_left(c.image);
    check_sealed(c, before);

    json_t* report = load_json(read_file_bytes(report_file));
    CHECK(str(report, "fingerprint_before") == before);
    CHECK(str(report, "fingerprint_after") == fingerprint_of(c));
    CHECK(str(report, "fingerprint_after") != before);
    CHECK(json_integer_value(json_object_get(report, "partition")) == 2);
    json_t* binding = json_object_get(report, "binding");
    CHECK(str(binding, "pin") == "tang");
    json_t* server = json_array_get(json_object_get(binding, "servers"), 0);
    CHECK(str(server, "url") == env.tang.url());
    CHECK(std::string(json_string_value(json_array_get(json_object_get(server, "signing_thumbprints"), 0))) ==
          env.tang.thumbprint());
    CHECK(str(server, "exchange_thumbprint").size() == 43);
    CHECK(json_array_size(json_object_get(report, "checks_passed")) >= 3);
    CHECK(json_array_size(json_object_get(report, "removed_keyslots")) == 1);
    CHECK(json_is_real(json_object_get(json_object_get(report, "timings_seconds"), "total")));
    CHECK(str(json_object_get(report, "policy"), "sha256") == sha256_file(env.policy));
    json_decref(report);

    // The ledger knows the sealed key.
    Ledger ledger = Ledger::open(env.ledger);
    auto records = ledger.records(fingerprint_of(c));
    REQUIRE(records.size() == 1);
    CHECK(records[0].event == "sealed");
    CHECK(records[0].image == fs::canonical(c.image).string() + " partition 2");

    // Sealing again is a verified no-op.
    const std::string header = read_file_bytes(c.image, c.offset, 16 * kMiB);
    RunResult again = env.seal(c.image, {"--report", "-"});
    CHECK(again.exit_code == 0);
    CHECK(again.err.find("already sealed") != std::string::npos);
    json_t* second = load_json(again.out);
    CHECK(json_is_true(json_object_get(second, "already_sealed")));
    json_decref(second);
    CHECK(read_file_bytes(c.image, c.offset, 16 * kMiB) == header);
}

TEST_CASE("seal refuses a wrong build passphrase and changes nothing") {
    Env env;
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string before = read_file_bytes(c.image);
    write_file(env.build_file, "not the build passphrase");
    RunResult result = env.seal(c.image);
    CHECK(result.exit_code == 3);  // AuthError
    CHECK(result.err.find("build passphrase opens no keyslot") != std::string::npos);
    CHECK(read_file_bytes(c.image) == before);
    check_no_loop_left(c.image);
}

TEST_CASE("seal with Tang down stops before writing anything; rerunning with Tang up finishes") {
    Env env;
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string before = fingerprint_of(c);
    const std::string image_before = read_file_bytes(c.image);
    env.tang.stop();
    RunResult down = env.seal(c.image);
    CHECK(down.exit_code == 6);  // TangError, before the re-encryption rather than after it
    CHECK(down.err.find("nothing was written") != std::string::npos);
    CHECK(read_file_bytes(c.image) == image_before);
    {
        LoopDevice loop(c.image, c.offset, c.size);
        CHECK(build_opens(loop.path()));
        CHECK(dump(loop.path()).find("luksforge-seal") == std::string::npos);
    }
    env.tang.start();
    RunResult up = env.seal(c.image);
    REQUIRE_MESSAGE(up.exit_code == 0, up.err);
    check_sealed(c, before);
}

TEST_CASE("kill -9 at every step of seal: always openable, and a rerun ends sealed") {
    Env env;
    Candidate tmpl = make_candidate(env.dir / "template.img");
    const std::string before = fingerprint_of(tmpl);
    for (const std::string& step : seal_crash_points()) {
        CAPTURE(step);
        Candidate c = copy_candidate(tmpl, env.dir / ("crash-" + step + ".img"));
        env.seal_killed_at(c.image, step);  // the hook fired, so this step really was interrupted
        check_no_loop_left(c.image);
        {
            LoopDevice loop(c.image, c.offset, c.size);
            CHECK_MESSAGE((build_opens(loop.path()) || any_clevis_opens(loop.path())),
                          "no way into the image after a crash at " << step);
        }
        // An unfinished seal is no base to stamp from.
        RunResult early = run_cli({"stamp", c.image.string(), "--count", "1", "--out", (env.dir / "early").string(),
                                   "--ledger", env.ledger.string()});
        CHECK(early.exit_code == 7);
        CHECK(early.err.find("unfinished seal") != std::string::npos);
        CHECK_FALSE(fs::exists(env.dir / "early" / ("crash-" + step + "-0001.img")));
        RunResult rerun = env.seal(c.image);
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        check_no_loop_left(c.image);
        check_sealed(c, before);
        fs::remove(c.image);
    }
}

// The livemedia-creator case: the kickstart's %post already ran stock `clevis luks bind` and removed the build
// passphrase, so the passphrase given to seal is the one that binding recovers. Seal removes that keyslot; its
// token must go with it (stock `clevis luks list`/`pass` trip over a token assigned to no keyslot), also when
// seal is killed at any step and rerun.
namespace {

// Stock cryptsetup's view of the header: every token assigned to at least one keyslot, each of which exists
// (except seal's own keyslot-less state record of an unfinished seal).
void check_no_dangling_token(const fs::path& device) {
    json_t* header = load_json(run_ok({"cryptsetup", "luksDump", "--dump-json-metadata", device.string()}));
    json_t* keyslots = json_object_get(header, "keyslots");
    const char* id = nullptr;
    json_t* token = nullptr;
    json_object_foreach(json_object_get(header, "tokens"), id, token) {
        if (str(token, "type") == "luksforge-seal") continue;
        const std::string token_id = id;
        CAPTURE(token_id);
        json_t* assigned = json_object_get(token, "keyslots");
        CHECK(json_array_size(assigned) > 0);
        std::size_t i = 0;
        json_t* slot = nullptr;
        json_array_foreach(assigned, i, slot) CHECK(json_object_get(keyslots, json_string_value(slot)) != nullptr);
    }
    json_decref(header);
}

// A candidate bound by stock `clevis luks bind` (keyslot 1, token 0) whose build keyslot 0 was then killed, as
// a kickstart's %post leaves it. Returns the passphrase the binding recovers.
std::string bind_like_kickstart(const Candidate& c, const test::TangServer& tang) {
    LoopDevice loop(c.image, c.offset, c.size);
    run_ok({"clevis", "luks", "bind", "-y", "-k", "-", "-d", loop.path().string(), "tang",
            R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})"},
           kBuild);
    run_ok({"cryptsetup", "luksKillSlot", "-q", loop.path().string(), "0"});
    REQUIRE(clevis_slots(loop.path()) == std::vector<int>{1});
    const std::string recovered = run_ok({"clevis", "luks", "pass", "-d", loop.path().string(), "-s", "1"});
    REQUIRE(recovered.size() > 20);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-slot", "1", "--key-file", "-", loop.path().string()},
              recovered)
              .exit_code == 0);
    return recovered;
}

// Sealed as stock tools see it, with the kickstart binding's keyslot and token gone.
void check_sealed_without_kickstart_binding(const Candidate& c, const std::string& before,
                                            const std::string& kickstart_passphrase) {
    check_sealed(c, before);
    LoopDevice loop(c.image, c.offset, c.size);
    check_no_dangling_token(loop.path());
    const std::vector<int> slots = clevis_slots(loop.path());
    CHECK(slots.size() == 1);
    for (int slot : slots) CHECK_MESSAGE(stock_clevis_opens(loop.path(), slot), "clevis luks pass -s " << slot);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", loop.path().string()},
              kickstart_passphrase)
              .exit_code != 0);
    Volume volume = Volume::open(loop.path(), Volume::Access::read_only);
    CHECK(volume.tokens().size() == 1);
    RunResult unlock = run_cli({"unlock", loop.path().string(), "--test"});
    CHECK_MESSAGE(unlock.exit_code == 0, unlock.err);
}

}  // namespace

TEST_CASE("seal with the passphrase of a keyslot stock clevis already bound: its token goes with the keyslot") {
    Env env;
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string kickstart = bind_like_kickstart(c, env.tang);
    write_file(env.build_file, kickstart);
    const std::string before = fingerprint_of(c);

    RunResult sealed = env.seal(c.image, {"--report", "-"});
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    check_no_loop_left(c.image);
    json_t* report = load_json(sealed.out);
    CHECK(json_array_size(json_object_get(report, "removed_keyslots")) == 1);
    json_decref(report);
    check_sealed_without_kickstart_binding(c, before, kickstart);

    // Sealing again is a no-op that still sees the one binding.
    RunResult again = env.seal(c.image);
    CHECK(again.exit_code == 0);
    CHECK(again.err.find("already sealed") != std::string::npos);
}

TEST_CASE("kill -9 at every step of sealing a clevis-bound image: never a dangling token, a rerun ends sealed") {
    Env env;
    Candidate tmpl = make_candidate(env.dir / "template.img");
    const std::string kickstart = bind_like_kickstart(tmpl, env.tang);
    write_file(env.build_file, kickstart);
    const std::string before = fingerprint_of(tmpl);
    for (const std::string& step : seal_crash_points()) {
        CAPTURE(step);
        Candidate c = copy_candidate(tmpl, env.dir / ("crash-" + step + ".img"));
        env.seal_killed_at(c.image, step);
        {
            LoopDevice loop(c.image, c.offset, c.size);
            check_no_dangling_token(loop.path());
            const bool kickstart_opens = run({"cryptsetup", "open", "--test-passphrase", "--key-file", "-",
                                              loop.path().string()},
                                             kickstart)
                                             .exit_code == 0;
            CHECK_MESSAGE((kickstart_opens || any_clevis_opens(loop.path())),
                          "no way into the image after a crash at " << step);
        }
        RunResult rerun = env.seal(c.image);
        CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
        check_no_loop_left(c.image);
        check_sealed_without_kickstart_binding(c, before, kickstart);
        fs::remove(c.image);
    }
}

TEST_CASE("stamp 5 instances: distinct keys, identical data, sparse 0600 files, own bindings, ledger") {
    Env env;
    Candidate base = make_candidate(env.dir / "base.img");
    RunResult sealed = env.seal(base.image);
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    const std::string base_fingerprint = fingerprint_of(base);
    SecretBuffer base_passphrase;
    {
        AttachedTarget attached = AttachedTarget::attach(select_luks_target(base.image), true);
        base_passphrase = clevis::unlock(Volume::open(attached.device(), Volume::Access::read_only)).passphrase;
    }

    const fs::path out = env.dir / "instances";
    RunResult stamped = run_cli({"stamp", base.image.string(), "--count", "5", "--out", out.string(), "--ledger",
                                 env.ledger.string(), "--policy", env.policy.string(), "--json"});
    REQUIRE_MESSAGE(stamped.exit_code == 0, stamped.err);
    check_no_loop_left(base.image);

    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(out)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    REQUIRE(names == std::vector<std::string>{"base-0001.img", "base-0002.img", "base-0003.img", "base-0004.img",
                                              "base-0005.img"});
    struct stat base_stat{};
    REQUIRE(::stat(base.image.c_str(), &base_stat) == 0);

    std::set<std::string> fingerprints{base_fingerprint};
    Ledger ledger = Ledger::open(env.ledger);
    for (const std::string& name : names) {
        CAPTURE(name);
        const fs::path image = out / name;
        struct stat st{};
        REQUIRE(::stat(image.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);
        CHECK(st.st_size == base_stat.st_size);
        // Sparse where the base is (the empty EFI partition stays a hole); re-encryption writes the data area.
        CHECK(st.st_blocks <= base_stat.st_blocks + 2048);
        CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 <= static_cast<std::uint64_t>(st.st_size) - 4 * kMiB);
        // The partition table came along unchanged.
        CHECK(read_file_bytes(image, 0, kMiB) == read_file_bytes(base.image, 0, kMiB));

        LoopDevice loop(image, base.offset, base.size);
        Volume volume = Volume::open(loop.path(), Volume::Access::read_only);
        const std::string fingerprint = volume.fingerprint();
        CHECK(fingerprints.insert(fingerprint).second);
        CHECK(volume.keyslots().size() == 1);
        CHECK_FALSE(volume.test_passphrase(base_passphrase.view()).has_value());
        clevis::Unlocked unlocked = clevis::unlock(volume);
        CHECK_FALSE(unlocked.passphrase.equals(base_passphrase.bytes()));
        // Independent decryption of the data area with the instance's own volume key.
        CHECK(decrypted_sha256(loop.path(), volume.volume_key(unlocked.passphrase.view())) == base.plain_sha256);
        CHECK(ledger.count_instances(fingerprint) == 1);
        auto records = ledger.records(fingerprint);
        REQUIRE(records.size() == 1);
        CHECK(records[0].event == "stamped");
        CHECK(records[0].policy_hash == sha256_file(env.policy));
    }
    CHECK(fingerprints.size() == 6);
    {
        // Stock Clevis opens an instance too.
        LoopDevice loop(out / names[2], base.offset, base.size);
        auto slots = clevis_slots(loop.path());
        REQUIRE(slots.size() == 1);
        CHECK(stock_clevis_opens(loop.path(), slots[0]));
    }

    json_t* report = load_json(stamped.out);
    CHECK(json_array_size(json_object_get(report, "instances")) == 5);
    CHECK(str(report, "base_fingerprint") == base_fingerprint);
    CHECK(str(report, "data_path") == "one-pass");  // the whole-disk GPT base: aes-xts-plain64
    json_decref(report);

    // A second stamp continues the numbering and never overwrites.
    RunResult more = run_cli({"stamp", base.image.string(), "--count", "1", "--out", out.string(), "--ledger",
                              env.ledger.string()});
    REQUIRE_MESSAGE(more.exit_code == 0, more.err);
    CHECK(fs::exists(out / "base-0006.img"));
}

TEST_CASE("clone keeps the key and refuses to exceed max_instances_per_key; audit finds the clone group") {
    Env env;
    Candidate base = make_candidate(env.dir / "base.img");
    REQUIRE(env.seal(base.image).exit_code == 0);
    const std::string base_fingerprint = fingerprint_of(base);

    SUBCASE("clone under the ledger's limit") {
        write_file(env.policy, read_file_bytes(env.policy) + "");
        RunResult first = run_cli({"clone", base.image.string(), (env.dir / "c1.img").string(), "--ledger",
                                   env.ledger.string(), "--max-per-key", "2"});
        REQUIRE_MESSAGE(first.exit_code == 0, first.err);
        Ledger ledger = Ledger::open(env.ledger);
        CHECK(ledger.count_instances(base_fingerprint) == 2);  // base + c1
        RunResult second = run_cli({"clone", base.image.string(), (env.dir / "c2.img").string(), "--ledger",
                                    env.ledger.string(), "--max-per-key", "2"});
        CHECK(second.exit_code == 8);
        CHECK(second.err.find("at most 2") != std::string::npos);
        CHECK_FALSE(fs::exists(env.dir / "c2.img"));
        CHECK(ledger.count_instances(base_fingerprint) == 2);
        struct stat st{};
        REQUIRE(::stat((env.dir / "c1.img").c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);
        CHECK(read_file_bytes(env.dir / "c1.img") == read_file_bytes(base.image));
    }

    SUBCASE("audit over 3 cp clones and 2 stamped images") {
        const fs::path fleet = env.dir / "fleet";
        fs::create_directories(fleet);
        for (int i = 1; i <= 3; ++i) run_ok({"cp", base.image.string(), (fleet / ("clone-" + std::to_string(i) + ".img")).string()});
        REQUIRE(run_cli({"stamp", base.image.string(), "--count", "2", "--out", fleet.string(), "--ledger",
                         env.ledger.string()})
                    .exit_code == 0);
        write_file(fleet / "notes.txt", "not an image\n");

        RunResult audited = run_cli({"audit", fleet.string(), "--json", "--ledger", env.ledger.string()});
        REQUIRE_MESSAGE(audited.exit_code == 0, audited.err);
        json_t* report = load_json(audited.out);
        CHECK(json_integer_value(json_object_get(report, "volumes_scanned")) == 5);
        CHECK(json_integer_value(json_object_get(report, "distinct_keys")) == 3);
        CHECK(json_integer_value(json_object_get(report, "flagged_groups")) == 1);
        json_t* groups = json_object_get(report, "groups");
        REQUIRE(json_array_size(groups) == 3);
        json_t* shared = json_array_get(groups, 0);
        CHECK(json_is_true(json_object_get(shared, "flagged")));
        CHECK(json_integer_value(json_object_get(shared, "count")) == 3);
        CHECK(str(shared, "fingerprint") == base_fingerprint);
        std::set<std::string> members;
        std::size_t i;
        json_t* member;
        json_array_foreach(json_object_get(shared, "members"), i, member) {
            members.insert(fs::path(str(member, "image")).filename().string());
            CHECK(json_integer_value(json_object_get(member, "partition")) == 2);
        }
        CHECK(members == std::set<std::string>{"clone-1.img", "clone-2.img", "clone-3.img"});
        // The ledger knows the key only from the sealed base: the cp copies are unrecorded.
        CHECK(json_integer_value(json_object_get(json_object_get(shared, "ledger"), "instances")) == 1);
        for (std::size_t g = 1; g < 3; ++g) {
            json_t* single = json_array_get(groups, g);
            CHECK(json_is_false(json_object_get(single, "flagged")));
            CHECK(json_integer_value(json_object_get(single, "count")) == 1);
        }
        json_t* skipped = json_object_get(report, "skipped");
        REQUIRE(json_array_size(skipped) == 1);
        CHECK(str(json_array_get(skipped, 0), "path").find("notes.txt") != std::string::npos);
        json_decref(report);

        // Human output, a higher limit, and --strict.
        RunResult text = run_cli({"audit", fleet.string()});
        CHECK(text.exit_code == 0);
        CHECK(text.out.find("SHARED " + base_fingerprint.substr(0, 16)) != std::string::npos);
        RunResult relaxed = run_cli({"audit", fleet.string(), base.image.string(), "--json", "--max-per-key", "4"});
        json_t* relaxed_report = load_json(relaxed.out);
        CHECK(json_integer_value(json_object_get(relaxed_report, "flagged_groups")) == 0);
        CHECK(json_integer_value(json_object_get(json_array_get(json_object_get(relaxed_report, "groups"), 0), "count")) == 4);
        json_decref(relaxed_report);
        CHECK(run_cli({"audit", fleet.string(), "--strict"}).exit_code == 8);
        check_no_loop_left(fleet / "clone-1.img");
    }
}

TEST_CASE("a bare LUKS2 file seals too") {
    Env env;
    const fs::path image = env.dir / "bare.img";
    make_sparse_file(image, 24 * kMiB);
    run_ok({"cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
            "1000", "--key-file", "-", image.string()},
           kBuild);
    RunResult sealed = env.seal(image);
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    CHECK_FALSE(build_opens(image));
    auto slots = clevis_slots(image);
    REQUIRE(slots.size() == 1);
    CHECK(stock_clevis_opens(image, slots[0]));
}

TEST_CASE("seal a block device holding a GPT disk, bound 2-of-2 (sss) to two Tang servers") {
    Env env;
    test::TangServer second;
    write_file(env.policy, "threshold = 2\n[[tang]]\nurl = \"" + env.tang.url() + "\"\nthp = \"" +
                               env.tang.thumbprint() + "\"\n[[tang]]\nurl = \"" + second.url() + "\"\nthp = \"" +
                               second.thumbprint() + "\"\n");
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string before = fingerprint_of(c);
    {
        // The whole disk as a block device: seal finds the GPT and the LUKS2 partition on it.
        LoopDevice disk(c.image);
        RunResult sealed = env.seal(disk.path(), {"--report", "-"});
        REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
        json_t* report = load_json(sealed.out);
        json_t* binding = json_object_get(report, "binding");
        CHECK(str(binding, "pin") == "sss");
        CHECK(json_array_size(json_object_get(binding, "servers")) == 2);
        json_decref(report);
    }
    check_no_loop_left(c.image);
    {
        LoopDevice loop(c.image, c.offset, c.size);
        CHECK(run_ok({"clevis", "luks", "list", "-d", loop.path().string()}).find("sss") != std::string::npos);
        // Threshold 2 of 2: with one server down, nothing opens.
        second.stop();
        CHECK_FALSE(any_clevis_opens(loop.path()));
        second.start();
    }
    check_sealed(c, before);
}

TEST_CASE("seal refuses, before writing anything, a policy whose token would not fit the LUKS2 metadata") {
    Env env;
    // Seven servers (sss 4-of-7) do not fit the default 16 KiB metadata; the estimate needs no network.
    std::string policy = "threshold = 4\n";
    for (int i = 1; i <= 7; ++i)
        policy += "[[tang]]\nurl = \"http://127.0.0.1:" + std::to_string(9 + i) + "\"\nthp = \"" +
                  env.tang.thumbprint() + "\"\n";
    write_file(env.policy, policy);
    Candidate c = make_candidate(env.dir / "disk.img");
    const std::string before = read_file_bytes(c.image);
    RunResult result = env.seal(c.image);
    CHECK(result.exit_code == 7);
    CHECK(result.err.find("do not fit") != std::string::npos);
    CHECK(read_file_bytes(c.image) == before);
    check_no_loop_left(c.image);
}

TEST_CASE("seal --copy: one pass into a new file renamed over the image; kill -9 before the rename changes nothing") {
    Env env;
    Candidate tmpl = make_candidate(env.dir / "template.img");
    const std::string before = fingerprint_of(tmpl);
    const std::string original_bytes = sha256_file(tmpl.image);
    const auto partials = [&] {
        std::size_t n = 0;
        for (const auto& entry : fs::directory_iterator(env.dir.path()))
            if (entry.path().filename().string().ends_with(".partial")) ++n;
        return n;
    };
    Candidate c = copy_candidate(tmpl, env.dir / "copy.img");
    for (const std::string step : {"one-pass-data-written", "one-pass-header-written"}) {
        CAPTURE(step);
        ::setenv("LUKSFORGE_CRASH_AT", step.c_str(), 1);
        const RunResult crashed = env.seal(c.image, {"--copy"});
        ::unsetenv("LUKSFORGE_CRASH_AT");
        CHECK_MESSAGE(crashed.exit_code == 128 + 9, crashed.err);
        check_no_loop_left(c.image);
        CHECK(sha256_file(c.image) == original_bytes);  // only read
        LoopDevice loop(c.image, c.offset, c.size);
        CHECK(build_opens(loop.path()));
    }
    CHECK(partials() >= 1);  // left by the killed runs, removed by the next one

    RunResult sealed = env.seal(c.image, {"--copy", "--report", "-"});
    REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    CHECK(partials() == 0);
    check_no_loop_left(c.image);
    check_sealed(c, before);
    CHECK(read_file_bytes(c.image, 0, kMiB) == read_file_bytes(tmpl.image, 0, kMiB));  // partition table
    json_t* report = load_json(sealed.out);
    CHECK(str(report, "data_path") == "one-pass copy");
    CHECK(str(report, "fingerprint_after") == fingerprint_of(c));
    CHECK(json_array_size(json_object_get(report, "checks_passed")) == 3);
    json_decref(report);
    CHECK(Ledger::open(env.ledger).records(fingerprint_of(c)).size() == 1);

    // Killed right after the rename: already sealed.
    Candidate late = copy_candidate(tmpl, env.dir / "late.img");
    ::setenv("LUKSFORGE_CRASH_AT", "copy-renamed", 1);
    const RunResult crashed = env.seal(late.image, {"--copy"});
    ::unsetenv("LUKSFORGE_CRASH_AT");
    CHECK(crashed.exit_code == 128 + 9);
    RunResult rerun = env.seal(late.image, {"--copy"});
    CHECK_MESSAGE(rerun.exit_code == 0, rerun.err);
    CHECK(rerun.err.find("already sealed") != std::string::npos);
    check_sealed(late, before);
}

TEST_CASE("stamp: one pass by default (holes kept unless --dense), libcryptsetup for ciphers it does not implement") {
    Env env;
    const auto sealed_bare_base = [&](const fs::path& image, const std::vector<std::string>& cipher) {
        make_sparse_file(image, 40 * kMiB);
        std::vector<std::string> format{"cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
                                        "--pbkdf-force-iterations", "1000", "--key-file", "-"};
        format.insert(format.end(), cipher.begin(), cipher.end());
        format.push_back(image.string());
        run_ok(format, kBuild);
        // 4 MiB of data at the start of the data area, the rest never written (a hole).
        run_ok({"dd", "if=/dev/urandom", "of=" + image.string(), "bs=1M", "seek=16", "count=4", "conv=notrunc",
                "status=none"});
        // Sealed by a one-pass copy, which keeps holes (libcryptsetup's re-encryption in place writes them all).
        RunResult sealed = env.seal(image, {"--copy"});
        REQUIRE_MESSAGE(sealed.exit_code == 0, sealed.err);
    };
    const auto plain_of = [](const fs::path& image) {
        Volume volume = Volume::open(image, Volume::Access::read_only);
        clevis::Unlocked unlocked = clevis::unlock(volume);
        SecretBuffer key = volume.volume_key(unlocked.passphrase.view(), unlocked.keyslot);
        const Inspection info = volume.inspect();
        return sha256_hex(decrypt_xts_plain64(read_file_bytes(image, info.data_offset_bytes, 4 * kMiB), key, info.sector_size));
    };

    const fs::path xts = env.dir / "xts.img";
    sealed_bare_base(xts, {});
    const std::string plain = plain_of(xts);
    // Another tool's keyslot-less metadata goes along into every instance.
    Volume::open(xts).set_token(R"({"type":"example-meta","keyslots":[],"note":"kept"})");
    for (const bool dense : {false, true}) {
        CAPTURE(dense);
        const fs::path out = env.dir / (dense ? "dense" : "sparse");
        std::vector<std::string> args{"stamp", xts.string(), "--count", "1", "--out", out.string(), "--ledger",
                                      env.ledger.string(), "--json"};
        if (dense) args.push_back("--dense");
        RunResult stamped = run_cli(args);
        REQUIRE_MESSAGE(stamped.exit_code == 0, stamped.err);
        json_t* report = load_json(stamped.out);
        CHECK(str(report, "data_path") == "one-pass");
        const json_int_t holes = json_integer_value(json_object_get(report, "hole_bytes_per_instance"));
        const json_int_t data = json_integer_value(json_object_get(report, "data_bytes_per_instance"));
        CHECK(data + holes == static_cast<json_int_t>(24 * kMiB));
        CHECK(holes == (dense ? 0 : static_cast<json_int_t>(20 * kMiB)));
        json_decref(report);
        const fs::path instance = out / "xts-0001.img";
        struct stat st{};
        REQUIRE(::stat(instance.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);
        // The header area (libcryptsetup fills the 16 MiB keyslots area with random bytes) and the 4 MiB of data.
        const std::uint64_t allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
        if (dense) CHECK(allocated >= 40 * kMiB);
        else CHECK(allocated <= 21 * kMiB);
        CHECK(plain_of(instance) == plain);
        CHECK(any_clevis_opens(instance));
        const std::vector<Token> tokens = Volume::open(instance, Volume::Access::read_only).tokens();
        CHECK(std::count_if(tokens.begin(), tokens.end(), [](const Token& t) { return t.type == "example-meta"; }) == 1);
        CHECK(tokens.size() == 2);  // and the instance's own clevis token
    }

    const fs::path cbc = env.dir / "cbc.img";
    sealed_bare_base(cbc, {"--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"});
    RunResult stamped = run_cli({"stamp", cbc.string(), "--count", "1", "--out", (env.dir / "cbc").string(),
                                 "--ledger", env.ledger.string(), "--json"});
    REQUIRE_MESSAGE(stamped.exit_code == 0, stamped.err);
    CHECK(stamped.err.find("cbc-essiv") != std::string::npos);
    CHECK(stamped.err.find("used libcryptsetup re-encryption") != std::string::npos);
    json_t* report = load_json(stamped.out);
    CHECK(str(report, "data_path") == "libcryptsetup");
    json_decref(report);
    const fs::path instance = env.dir / "cbc" / "cbc-0001.img";
    CHECK(any_clevis_opens(instance));
    CHECK(Volume::open(instance, Volume::Access::read_only).fingerprint() !=
          Volume::open(cbc, Volume::Access::read_only).fingerprint());
}
