// The tpm2 pin against a real software TPM (swtpm) and stock Clevis 19 (clevis-tpm2, tpm2-tools): JWEs both
// ways, PCR policies that stop holding when a PCR is extended, sss over tang + tpm2, LUKS bindings through the
// CLI opened by `clevis luks pass`, list/unlock/regen, and bad configurations refused before anything is written.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "luks_image.hpp"
#include "swtpm.hpp"
#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/policy.hpp>

#include <jansson.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "build passphrase for the tpm2 tests";
const std::string kSecret = "the secret a pin protects\n\x01\x02 with binary bytes";

std::span<const std::uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string json_get(const std::string& json, const std::vector<std::string>& path) {
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE_MESSAGE(root != nullptr, json);
    json_t* v = root;
    for (const auto& key : path) v = json_is_array(v) ? json_array_get(v, std::stoul(key)) : json_object_get(v, key.c_str());
    std::string result;
    if (json_is_string(v)) {
        result = json_string_value(v);
    } else if (v) {
        char* text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        result = text;
        free(text);
    }
    json_decref(root);
    return result;
}

// The protected header of a compact JWE, decoded by stock jose.
std::string header_of(const std::string& jwe) { return run_ok({"jose", "b64", "dec", "-i-"}, jwe.substr(0, jwe.find('.'))); }

// The names of the members of a JSON object, in order.
std::string member_names(const std::string& object_json) {
    json_error_t error;
    json_t* root = json_loads(object_json.c_str(), JSON_PRESERVE_ORDER, &error);
    REQUIRE(root != nullptr);
    std::string names;
    const char* key = nullptr;
    json_t* value = nullptr;
    json_object_foreach(root, key, value) names += std::string(names.empty() ? "" : ",") + key;
    json_decref(root);
    return names;
}

// Stock Clevis against the test's swtpm. Clevis 19 (tpm2-tools 5) leaves a policy session loaded after each
// PCR-bound encryption, and the sealed object when tpm2_unseal fails: on a host the kernel's resource manager
// (/dev/tpmrm0) flushes them when the tool exits, but swtpm has none and holds only three of each, so flush
// them (tpm2_flushcontext -l, -t) after each run. luksforge's own calls must leave nothing behind (checked).
RunResult stock(const std::vector<std::string>& argv, const std::string& input = {}) {
    RunResult r = run(argv, input);
    run_ok({"tpm2_flushcontext", "-l"});
    run_ok({"tpm2_flushcontext", "-t"});
    return r;
}

std::string stock_ok(const std::vector<std::string>& argv) {
    const RunResult r = stock(argv);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    return r.out;
}

std::string clevis_encrypt_stock(const std::string& pin, const std::string& config, const std::string& secret) {
    const RunResult r = stock({"clevis", "encrypt", pin, config}, secret);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    return r.out;
}

RunResult clevis_decrypt_stock(const std::string& jwe) { return stock({"clevis", "decrypt"}, jwe); }

std::string ours(const SecretBuffer& secret) { return std::string(secret.view()); }

struct Image : PassphraseImage {
    Image() : PassphraseImage(kPass) {}
};

int cli_bind(const Image& image, const std::string& pin, const std::string& config) {
    const RunResult r = run_cli({"bind", image.path.string(), pin, config, "--passphrase-file", image.pass_file.string(),
                                 "--json"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(json_get(r.out, {"verified"}) == "true");
    return std::stoi(json_get(r.out, {"keyslot"}));
}

bool cryptsetup_accepts(const Image& image, int slot, const std::string& passphrase) {
    return run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), image.path.string(),
                "--key-file", "-"},
               passphrase)
               .exit_code == 0;
}

std::string pinned(const TangServer& tang) {
    return R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
}

}  // namespace

TEST_CASE("luksforge encrypts, stock clevis decrypts: the header is clevis-encrypt-tpm2's, member for member") {
    SoftwareTpm tpm;
    // The same config through both: the headers must have the same members in the same order with the same
    // values (the blobs differ: fresh keys).
    for (const std::string config : {R"({})", R"({"pcr_ids":"7"})", R"({"pcr_ids":"0, 7","pcr_bank":"sha256"})",
                                     R"({"key":"rsa","hash":"sha256"})", R"({"hash":"sha1"})",
                                     R"({"pcr_ids":"0,1,2,3,4,5,6,23","pcr_bank":"sha256"})"}) {
        CAPTURE(config);
        const std::string jwe = clevis_encrypt("tpm2", config, bytes(kSecret));
        const std::string stock = clevis_encrypt_stock("tpm2", config, kSecret);
        const std::string ours_header = header_of(jwe), stock_header = header_of(stock);
        CHECK(member_names(ours_header) == member_names(stock_header));
        CHECK(member_names(json_get(ours_header, {"clevis"})) == member_names(json_get(stock_header, {"clevis"})));
        const std::string ours_tpm2 = json_get(ours_header, {"clevis", "tpm2"});
        const std::string stock_tpm2 = json_get(stock_header, {"clevis", "tpm2"});
        CHECK(member_names(ours_tpm2) == member_names(stock_tpm2));
        for (const char* member : {"hash", "key", "pcr_bank", "pcr_ids"})
            CHECK(json_get(ours_tpm2, {member}) == json_get(stock_tpm2, {member}));
        // The sealed object's public area is the same but for its unique field (a hash over fresh seed + data).
        const std::string ours_pub = run_ok({"jose", "b64", "dec", "-i-"}, json_get(ours_tpm2, {"jwk_pub"}));
        const std::string stock_pub = run_ok({"jose", "b64", "dec", "-i-"}, json_get(stock_tpm2, {"jwk_pub"}));
        REQUIRE(ours_pub.size() == stock_pub.size());
        const std::size_t unique_bytes = (json_get(ours_tpm2, {"hash"}) == "sha1" ? 20 : 32);
        CHECK(ours_pub.substr(0, ours_pub.size() - unique_bytes) == stock_pub.substr(0, stock_pub.size() - unique_bytes));

        const RunResult decrypted = clevis_decrypt_stock(jwe);
        REQUIRE_MESSAGE(decrypted.exit_code == 0, decrypted.err);
        CHECK(decrypted.out == kSecret);
        CHECK(ours(clevis_decrypt(stock)) == kSecret);
        CHECK(ours(clevis_decrypt(jwe)) == kSecret);
    }
}

TEST_CASE("stock clevis encrypt tpm2, luksforge decrypts: no PCRs, PCR 7, the array form, rsa") {
    SoftwareTpm tpm;
    for (const std::string config : {R"({})", R"({"pcr_ids":"7"})", R"({"pcr_ids":["0","7"]})",
                                     R"({"pcr_ids":"16","pcr_bank":"sha256"})", R"({"key":"rsa"})"}) {
        CAPTURE(config);
        const std::string stock = clevis_encrypt_stock("tpm2", config, kSecret);
        CHECK(ours(clevis_decrypt(stock)) == kSecret);
    }
    // Blobs that are not a marshalled TPM2B_PUBLIC / TPM2B_PRIVATE: refused before the TPM is used.
    const std::string good = clevis_encrypt_stock("tpm2", "{}", kSecret);
    const std::string header = header_of(good);
    for (const std::string member : {"jwk_pub", "jwk_priv"}) {
        const std::string value = json_get(header, {"clevis", "tpm2", member});
        std::string bad_header = header;
        bad_header.replace(bad_header.find(value), value.size(), "AAAA");
        const std::string bad = run_ok({"jose", "b64", "enc", "-I-"}, bad_header) + good.substr(good.find('.'));
        try {
            (void)clevis_decrypt(bad);
            FAIL("accepted a bad " << member);
        } catch (const FormatError& e) {
            CHECK_MESSAGE(std::string(e.what()).find(member + " is not a marshalled") != std::string::npos, e.what());
        }
    }

    // Tampered ciphertext: the unsealed key does not authenticate it.
    std::string stock = clevis_encrypt_stock("tpm2", "{}", kSecret);
    const std::size_t tag = stock.rfind('.');
    stock[tag - 2] = stock[tag - 2] == 'A' ? 'B' : 'A';
    CHECK_THROWS_AS(clevis_decrypt(stock), AuthError);
}

TEST_CASE("PCR policy: an extended PCR makes unlock fail clearly (both pins' JWEs); reset, it works again") {
    SoftwareTpm tpm;
    const std::string config = R"({"pcr_ids":"16","pcr_bank":"sha256"})";
    const std::string jwe = clevis_encrypt("tpm2", config, bytes(kSecret));
    const std::string stock = clevis_encrypt_stock("tpm2", config, kSecret);
    const std::string unbound = clevis_encrypt("tpm2", R"({"pcr_ids":"23"})", bytes(kSecret));
    CHECK(ours(clevis_decrypt(jwe)) == kSecret);

    tpm.extend_pcr(16);
    for (const std::string& sealed : {jwe, stock}) {
        try {
            (void)clevis_decrypt(sealed);
            FAIL("decrypted after PCR 16 changed");
        } catch (const PcrMismatchError& e) {
            const std::string message = e.what();
            CHECK_MESSAGE(message.find("PCRs sha256:16") != std::string::npos, message);
            CHECK_MESSAGE(message.find("changed") != std::string::npos, message);
        }
        CHECK(clevis_decrypt_stock(sealed).exit_code != 0);  // stock Clevis agrees
    }
    // PcrMismatchError is an AuthError (a wrong key, not a broken TPM); a JWE bound to other PCRs still works.
    CHECK_THROWS_AS(clevis_decrypt(jwe), AuthError);
    CHECK(ours(clevis_decrypt(unbound)) == kSecret);

    tpm.reset_pcr(16);
    CHECK(ours(clevis_decrypt(jwe)) == kSecret);
    CHECK(ours(clevis_decrypt(stock)) == kSecret);

    // Every object and session luksforge made is gone again, failures included (no resource manager cleans up
    // after a process on swtpm).
    CHECK(run_ok({"tpm2_getcap", "handles-transient"}).empty());
    CHECK(run_ok({"tpm2_getcap", "handles-loaded-session"}).empty());
}

TEST_CASE("pcr_digest seals to given PCR values: not yet open, open after the expected measurement") {
    SoftwareTpm tpm;
    // The value PCR 16 will hold after one extend with the test's measurement: sha256(old || sha256(data)).
    const std::string before = tpm.read_pcr(16);
    const std::string measurement = "luksforge test";
    std::string step = run_ok({"openssl", "dgst", "-sha256", "-binary"}, measurement);
    const std::string future = run_ok({"openssl", "dgst", "-sha256", "-binary"}, before + step);
    const std::string digest = run_ok({"jose", "b64", "enc", "-I-"}, future);
    const std::string config = R"({"pcr_ids":"16","pcr_bank":"sha256","pcr_digest":")" + digest + R"("})";
    const std::string jwe = clevis_encrypt("tpm2", config, bytes(kSecret));
    const std::string stock = clevis_encrypt_stock("tpm2", config, kSecret);
    CHECK_THROWS_AS(clevis_decrypt(jwe), PcrMismatchError);
    CHECK_THROWS_AS(clevis_decrypt(stock), PcrMismatchError);
    tpm.extend_pcr(16, "sha256", measurement);
    CHECK(tpm.read_pcr(16) == future);
    CHECK(ours(clevis_decrypt(jwe)) == kSecret);
    CHECK(ours(clevis_decrypt(stock)) == kSecret);
    CHECK(clevis_decrypt_stock(jwe).out == kSecret);
}

TEST_CASE("bad tpm2 configs: a clear FormatError each, before the TPM is used") {
    SoftwareTpm tpm;
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"pcr":"7"})", "unknown configuration member \"pcr\""},
        {R"({"pcr_ids":"24"})", "not a PCR number from 0 to 23"},
        {R"({"pcr_ids":"7,x"})", "\"x\" is not a PCR number"},
        {R"({"pcr_ids":"7,7"})", "names PCR 7 twice"},
        {R"({"pcr_ids":"0,1,2,3,4,5,6,7,8"})", "names more than 8 PCRs"},
        {R"({"pcr_ids":7})", "must be a string"},
        {R"({"pcr_ids":"7","pcr_bank":"md5"})", "unsupported pcr_bank \"md5\""},
        {R"({"hash":"sha3"})", "unsupported hash \"sha3\""},
        {R"({"key":"dsa"})", "unsupported key \"dsa\""},
        {R"({"key":1})", "\"key\" must be a string"},
        {R"({"policy_pubkey_path":"/k.pem"})", "not supported by Clevis 19"},
        {R"({"pcr_digest":"AAAA"})", "needs \"pcr_ids\""},
        {R"({"pcr_ids":"7","pcr_digest":"AAAA"})", "holds 3 bytes; 1 sha1 PCR values are 20"},
    };
    for (const auto& [config, expected] : cases) {
        CAPTURE(config);
        try {
            (void)clevis_encrypt("tpm2", config, bytes(kSecret));
            FAIL("accepted");
        } catch (const FormatError& e) {
            CHECK_MESSAGE(std::string(e.what()).find(expected) != std::string::npos, e.what());
        }
    }
}

TEST_CASE("a PCR bank the TPM has not allocated: a clear FormatError (Clevis's default sha1 on many TPMs)") {
    SoftwareTpm tpm;
    run_ok({"tpm2_pcrallocate", "sha1:none+sha256:all"});
    tpm.restart();
    const std::vector<std::string> configs = {
        R"({"pcr_ids":"7"})", R"({"pcr_ids":"7","pcr_bank":"sha1","pcr_digest":")" + std::string(27, 'A') + R"("})"};
    for (const std::string& config : configs) {
        CAPTURE(config);
        try {
            (void)clevis_encrypt("tpm2", config, bytes(kSecret));
            FAIL("sealed to a bank the TPM does not have");
        } catch (const FormatError& e) {
            CHECK_MESSAGE(std::string(e.what()).find("no PCR bank sha1 with PCRs 7") != std::string::npos, e.what());
        }
        CHECK(stock({"clevis", "encrypt", "tpm2", config}, kSecret).exit_code != 0);  // Clevis refuses it too
    }
    CHECK(ours(clevis_decrypt(clevis_encrypt("tpm2", R"({"pcr_ids":"7","pcr_bank":"sha256"})", bytes(kSecret)))) ==
          kSecret);
}

TEST_CASE("no TPM: a clear TpmError (no swtpm answering; no device and no TPM2TOOLS_TCTI)") {
    SoftwareTpm tpm;
    const std::string jwe = clevis_encrypt("tpm2", "{}", bytes(kSecret));
    tpm.stop();
    CHECK_THROWS_AS(clevis_encrypt("tpm2", "{}", bytes(kSecret)), TpmError);
    try {
        (void)clevis_decrypt(jwe);
        FAIL("decrypted without a TPM");
    } catch (const TpmError& e) {
        CHECK_MESSAGE(std::string(e.what()).find("TCTI") != std::string::npos, e.what());
    }
    ::unsetenv("TPM2TOOLS_TCTI");
    if (!std::filesystem::exists("/dev/tpmrm0")) {
        try {
            (void)clevis_decrypt(jwe);
            FAIL("decrypted without a TPM");
        } catch (const TpmError& e) {
            CHECK_MESSAGE(std::string(e.what()).find("no /dev/tpmrm") != std::string::npos, e.what());
            CHECK(e.code().value() == ENODEV);
        }
    } else {
        MESSAGE("this host has /dev/tpmrm0: the no-device message is not checked here");
    }
}

TEST_CASE("sss over tang and tpm2 (t=2) both ways; a changed PCR or a missing Tang makes it fail") {
    SoftwareTpm tpm;
    TangServer tang;
    const std::string config =
        R"({"t":2,"pins":{"tang":[)" + pinned(tang) + R"(],"tpm2":{"pcr_ids":"16","pcr_bank":"sha256"}}})";
    const std::string jwe = clevis_encrypt("sss", config, bytes(kSecret));
    const std::string stock = clevis_encrypt_stock("sss", config, kSecret);
    const RunResult decrypted = clevis_decrypt_stock(jwe);
    REQUIRE_MESSAGE(decrypted.exit_code == 0, decrypted.err);
    CHECK(decrypted.out == kSecret);
    CHECK(ours(clevis_decrypt(stock)) == kSecret);
    CHECK(ours(clevis_decrypt(jwe)) == kSecret);

    // "tang or tpm2" (t=1) still opens with the PCR changed; t=2 does not, and says why.
    const std::string either = clevis_encrypt(
        "sss", R"({"t":1,"pins":{"tang":[)" + pinned(tang) + R"(],"tpm2":{"pcr_ids":"16","pcr_bank":"sha256"}}})",
        bytes(kSecret));
    tpm.extend_pcr(16);
    CHECK(ours(clevis_decrypt(either)) == kSecret);
    try {
        (void)clevis_decrypt(stock);
        FAIL("sss t=2 opened with a changed PCR");
    } catch (const AuthError& e) {
        CHECK_MESSAGE(std::string(e.what()).find("tpm2") != std::string::npos, e.what());
    }
    tpm.reset_pcr(16);
    tang.stop();
    CHECK_THROWS_AS(clevis_decrypt(jwe), TangError);
    CHECK(ours(clevis_decrypt(either)) == kSecret);
}

TEST_CASE("luksforge bind IMG tpm2: clevis luks pass opens it; list, unlock and pass agree with Clevis") {
    SoftwareTpm tpm;
    Image image;
    const int slot = cli_bind(image, "tpm2", R"({"pcr_ids":"7"})");
    const RunResult pass = stock({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    CHECK(cryptsetup_accepts(image, slot, pass.out));
    CHECK(run_cli({"pass", image.path.string(), "--slot", std::to_string(slot)}).out == pass.out);

    const RunResult stock_list = stock({"clevis", "luks", "list", "-d", image.path.string()});
    REQUIRE(stock_list.exit_code == 0);
    CHECK(stock_list.out ==
          std::to_string(slot) + ": tpm2 '{\"hash\":\"sha256\",\"key\":\"ecc\",\"pcr_bank\":\"sha1\",\"pcr_ids\":\"7\"}'\n");
    CHECK(run_cli({"list", image.path.string()}).out == stock_list.out);
    CHECK(json_get(run_cli({"list", image.path.string(), "--json"}).out, {"0", "config", "pcr_ids"}) == "7");
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 0);

    // Stock clevis luks bind tpm2, luksforge opens it.
    const RunResult bound = stock({"clevis", "luks", "bind", "-y", "-d", image.path.string(), "-k",
                                 image.pass_file.string(), "-s", "5", "tpm2", R"({"pcr_ids":"16","pcr_bank":"sha256"})"});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    const RunResult theirs = run_cli({"pass", image.path.string(), "--slot", "5"});
    REQUIRE_MESSAGE(theirs.exit_code == 0, theirs.err);
    CHECK(cryptsetup_accepts(image, 5, theirs.out));
}

TEST_CASE("tpm2 binding after a PCR change: unlock fails (exit 3, says PCR); regen with a passphrase reseals") {
    SoftwareTpm tpm;
    Image image;
    const int slot = cli_bind(image, "tpm2", R"({"pcr_ids":"16","pcr_bank":"sha256"})");
    const std::string old_pass = stock_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    tpm.extend_pcr(16);

    const RunResult failed = run_cli({"pass", image.path.string(), "--slot", std::to_string(slot)});
    CHECK(failed.exit_code == 3);
    CHECK_MESSAGE(failed.err.find("PCRs sha256:16") != std::string::npos, failed.err);
    CHECK_MESSAGE(std::count(failed.err.begin(), failed.err.end(), '\n') == 1, failed.err);  // no tpm2-tss log lines
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 3);
    CHECK(stock({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)}).exit_code != 0);

    // regen: the old binding no longer opens, so the passphrase comes from the build keyslot; the new binding is
    // sealed to the PCR's new value, in place.
    const RunResult regen = run_cli({"regen", image.path.string(), "--slot", std::to_string(slot), "--passphrase-file",
                                     image.pass_file.string(), "--json"});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(json_get(regen.out, {"new", "keyslot"}) == std::to_string(slot));
    CHECK(json_get(regen.out, {"new", "verified"}) == "true");
    const std::string new_pass = stock_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    CHECK(new_pass != old_pass);
    CHECK(cryptsetup_accepts(image, slot, new_pass));
    CHECK(run_cli({"list", image.path.string()}).out ==
          std::to_string(slot) + ": tpm2 '{\"hash\":\"sha256\",\"key\":\"ecc\",\"pcr_bank\":\"sha256\",\"pcr_ids\":\"16\"}'\n");
}

TEST_CASE("luksforge bind IMG sss over tang + tpm2: clevis luks pass opens it; stock bind opens in luksforge") {
    SoftwareTpm tpm;
    TangServer tang;
    Image image;
    const std::string config = R"({"t":2,"pins":{"tang":[)" + pinned(tang) + R"(],"tpm2":{}}})";
    const int slot = cli_bind(image, "sss", config);
    const RunResult pass = stock({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    CHECK(cryptsetup_accepts(image, slot, pass.out));
    CHECK(run_cli({"list", image.path.string()}).out == stock_ok({"clevis", "luks", "list", "-d", image.path.string()}));

    const RunResult bound = stock({"clevis", "luks", "bind", "-y", "-d", image.path.string(), "-k",
                                 image.pass_file.string(), "-s", "6", "sss", config});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    const RunResult theirs = run_cli({"pass", image.path.string(), "--slot", "6"});
    REQUIRE_MESSAGE(theirs.exit_code == 0, theirs.err);
    CHECK(cryptsetup_accepts(image, 6, theirs.out));
}

TEST_CASE("luksforge bind IMG tpm2 with a bad config: exit 7, the header bytes unchanged") {
    SoftwareTpm tpm;
    Image image;
    const std::string before = image.header();
    for (const std::string config : {R"({"pcr_ids":"99"})", R"({"pcr_bank":"sha3","pcr_ids":"7"})", R"({"nope":1})",
                                     R"({"t":1,"pins":{"tpm2":{"key":"dsa"}}})"}) {
        CAPTURE(config);
        const std::string pin = config.find("pins") != std::string::npos ? "sss" : "tpm2";
        const RunResult r = run_cli({"bind", image.path.string(), pin, config, "--passphrase-file",
                                     image.pass_file.string()});
        CHECK(r.exit_code == 7);
        CHECK_MESSAGE(r.err.find("tpm2") != std::string::npos, r.err);
        CHECK(image.header() == before);
    }
    // No TPM at all: a clear error (exit 1) and nothing written either.
    tpm.stop();
    const RunResult r = run_cli({"bind", image.path.string(), "tpm2", "{}", "--passphrase-file", image.pass_file.string()});
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.err.find("TPM") != std::string::npos, r.err);
    CHECK(image.header() == before);
}

TEST_CASE("policy files: [tpm2] as one more share; bind --policy opens in clevis; seal and stamp refuse it") {
    SoftwareTpm tpm;
    TangServer tang;
    TempDir dir;
    const auto policy_file = dir / "policy.toml";
    write_file(policy_file, "threshold = 2\n\n[[tang]]\nurl = \"" + tang.url() + "\"\nthp = \"" + tang.thumbprint() +
                                "\"\n\n[tpm2]\npcr_ids = [16]\npcr_bank = \"sha256\"\n");
    const Policy policy = Policy::load(policy_file);
    CHECK(policy.check().empty());
    REQUIRE(policy.tpm2);
    CHECK(policy.tpm2->config_json == R"({"pcr_bank":"sha256","pcr_ids":"16"})");
    CHECK(policy.tpm2->line == 7);
    const Policy::Pin pin = policy.pin();
    CHECK(pin.name == "sss");
    CHECK(pin.config_json == R"({"t":2,"pins":{"tang":[{"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() +
                                 R"("}],"tpm2":{"pcr_bank":"sha256","pcr_ids":"16"}}})");
    CHECK(run_cli({"policy", "pin", policy_file.string()}).out == "sss " + pin.config_json + "\n");
    CHECK(run_cli({"policy", "check", policy_file.string()}).exit_code == 0);

    Image image;
    const RunResult bound = run_cli({"bind", image.path.string(), "--policy", policy_file.string(), "--passphrase-file",
                                     image.pass_file.string()});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    const RunResult pass = stock({"clevis", "luks", "pass", "-d", image.path.string(), "-s", "1"});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    CHECK(cryptsetup_accepts(image, 1, pass.out));

    // seal and stamp run on the build host: a [tpm2] there would be the build host's TPM. Refused, nothing written.
    Image other;
    const std::string before = other.header();
    const RunResult seal = run_cli({"seal", other.path.string(), "--policy", policy_file.string(),
                                    "--build-passphrase-file", other.pass_file.string(), "--no-ledger", "-q"});
    CHECK(seal.exit_code == 7);
    CHECK_MESSAGE(seal.err.find("build host's TPM") != std::string::npos, seal.err);
    CHECK(other.header() == before);

    // A [tpm2] alone with t = 1 is the tpm2 pin itself.
    const Policy alone = Policy::parse("[tpm2]\npcr_ids = \"7\"\n");
    CHECK(alone.check().empty());
    CHECK(alone.pin().name == "tpm2");
    CHECK(alone.pin().config_json == R"({"pcr_ids":"7"})");
    CHECK(alone.estimate_token().token_bytes > 900);
}

TEST_CASE("policy files: bad [tpm2] tables are problems on their lines") {
    const auto messages = [](const std::string& text) {
        std::string all;
        for (const PolicyProblem& p : Policy::parse(text).check()) all += p.to_string() + "\n";
        return all;
    };
    const std::string url = "[[tang]]\nurl = \"http://127.0.0.1:9\"\nthp = \"x5j47HARIeE6pkZckMW8Z7dvFQ8XWCRdQ_5UlETyj4I\"\n";
    CHECK_MESSAGE(messages(url + "[tpm2]\npcr_ids = \"99\"\n").find("<policy>:4: [tpm2]: tpm2: \"pcr_ids\" \"99\"") !=
                      std::string::npos,
                  messages(url + "[tpm2]\npcr_ids = \"99\"\n"));
    CHECK(messages(url + "[tpm2]\npcr = \"7\"\n").find("<policy>:5: unknown key tpm2.pcr") != std::string::npos);
    CHECK(messages(url + "[tpm2]\npcr_bank = \"md5\"\n").find("unsupported pcr_bank \"md5\"") != std::string::npos);
    CHECK(messages(url + "[tpm2]\nkey = 3\n").find("tpm2.key must be a string") != std::string::npos);
    CHECK(messages("threshold = 3\n" + url + "[tpm2]\n").find("larger than the 1 Tang server and the TPM2") !=
          std::string::npos);
    CHECK(messages("tpm2 = 1\n").find("tpm2 must be a table") != std::string::npos);
}
