// Interoperability with stock cryptsetup, both ways: what luksforge makes, cryptsetup accepts and opens;
// what `cryptsetup luksFormat` makes, luksforge reads and agrees about.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "testutil.hpp"

#include <luksforge/luks.hpp>

#include <jansson.h>

#include <string>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;

bool cryptsetup_opens(const std::filesystem::path& image, int slot, const std::filesystem::path& key_file) {
    return run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), "--key-file",
                key_file.string(), image.string()})
               .exit_code == 0;
}

// cryptsetup's own view of the header: `cryptsetup luksDump --dump-json-metadata` is 2.7+, so read the
// human dump and pick lines.
std::string dump_value(const std::string& dump, const std::string& key) {
    const auto pos = dump.find(key);
    if (pos == std::string::npos) return {};
    auto start = pos + key.size();
    while (start < dump.size() && (dump[start] == ' ' || dump[start] == '\t' || dump[start] == ':')) ++start;
    return dump.substr(start, dump.find('\n', start) - start);
}

}  // namespace

TEST_CASE("luksforge-made volumes pass cryptsetup luksDump and open --test-passphrase per slot") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 48 * kMiB);
    write_file(dir / "p0", "first passphrase");
    write_file(dir / "p1", "second passphrase");
    write_file(dir / "p3", "third passphrase");
    {
        FormatOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast();
        options.label = "interop";
        Volume volume = Volume::format(image, options);
        volume.add_keyslot_by_volume_key("first passphrase");
        volume.add_keyslot("first passphrase", "second passphrase", Pbkdf{Pbkdf::Type::argon2id, "sha256", 4, 32768, 1, 0});
        volume.add_keyslot("second passphrase", "third passphrase", Pbkdf::pbkdf2_fast(1234), 3);
        volume.set_token(R"({"type":"luksforge-test","keyslots":["1"],"note":"x"})");
    }
    const RunResult dump = run({"cryptsetup", "luksDump", image.string()});
    REQUIRE_MESSAGE(dump.exit_code == 0, dump.err);
    const Inspection info = Volume::open(image, Volume::Access::read_only).inspect();
    CHECK(dump_value(dump.out, "UUID:") == info.uuid);
    CHECK(dump_value(dump.out, "Label:") == "interop");
    CHECK(dump_value(dump.out, "cipher:") == "aes-xts-plain64");
    CHECK(dump_value(dump.out, "sector:") == "4096 [bytes]");
    CHECK(dump.out.find("luksforge-test") != std::string::npos);
    CHECK(dump.out.find("Iterations: 1234") != std::string::npos);
    CHECK(dump.out.find("argon2id") != std::string::npos);
    CHECK(run({"cryptsetup", "isLuks", "--type", "luks2", image.string()}).exit_code == 0);

    CHECK(cryptsetup_opens(image, 0, dir / "p0"));
    CHECK(cryptsetup_opens(image, 1, dir / "p1"));
    CHECK(cryptsetup_opens(image, 3, dir / "p3"));
    CHECK_FALSE(cryptsetup_opens(image, 0, dir / "p1"));
    CHECK_FALSE(cryptsetup_opens(image, 3, dir / "p0"));
    // The volume key recovered by cryptsetup equals luksforge's (same key, same header).
    const RunResult vk = run({"cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
                              (dir / "p0").string(), "--volume-key-file", (dir / "vk").string(), image.string()});
    REQUIRE_MESSAGE(vk.exit_code == 0, vk.err);
    const SecretBuffer key = Volume::open(image, Volume::Access::read_only).volume_key("first passphrase");
    CHECK(key.equals({reinterpret_cast<const std::uint8_t*>(read_file_bytes(dir / "vk").data()), 64}));
}

TEST_CASE("cryptsetup luksFormat-made volumes are read by luksforge") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 40 * kMiB);
    write_file(dir / "key", "cryptsetup made this");
    write_file(dir / "key2", "second");
    run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
            "--pbkdf-force-iterations", "1000", "--label", "stock", "--key-file", (dir / "key").string(),
            image.string()});
    run_ok({"cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", (dir / "key").string(), "--key-slot", "5", image.string(), (dir / "key2").string()});
    const std::string uuid = run_ok({"cryptsetup", "luksUUID", image.string()});

    Volume volume = Volume::open(image);
    const Inspection info = volume.inspect();
    CHECK(info.uuid + "\n" == uuid);
    CHECK(info.label == "stock");
    CHECK(info.cipher == "aes-xts-plain64");
    REQUIRE(info.keyslots.size() == 2);
    CHECK(info.keyslots[0].id == 0);
    CHECK(info.keyslots[1].id == 5);
    CHECK(info.keyslots[1].pbkdf.iterations == 1000);
    CHECK(volume.test_passphrase("cryptsetup made this") == 0);
    CHECK(volume.test_passphrase("second", 5) == 5);
    // And the other direction on the same volume: luksforge adds, cryptsetup opens.
    const int slot = volume.add_keyslot("second", "third", Pbkdf::pbkdf2_fast());
    write_file(dir / "key3", "third");
    CHECK(cryptsetup_opens(image, slot, dir / "key3"));
    // Tokens cryptsetup imports are listed.
    write_file(dir / "token.json", R"({"type":"stock-token","keyslots":["0"]})");
    run_ok({"cryptsetup", "token", "import", "--json-file", (dir / "token.json").string(), "--token-id", "2",
            image.string()});
    Volume reopened = Volume::open(image, Volume::Access::read_only);
    const auto token = reopened.token(2);
    REQUIRE(token);
    CHECK(token->type == "stock-token");
    CHECK(token->keyslots == std::vector<int>{0});
}

TEST_CASE("two separate formats never share a volume key; fingerprints agree with key identity") {
    TempDir dir;
    std::vector<std::string> fingerprints;
    std::vector<std::string> keys;
    for (int i = 0; i < 3; ++i) {
        const auto image = dir / ("d" + std::to_string(i) + ".img");
        make_sparse_file(image, 32 * kMiB);
        FormatOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast();
        Volume volume = Volume::format(image, options);
        volume.add_keyslot_by_volume_key("p");
        fingerprints.push_back(volume.fingerprint());
        keys.emplace_back(volume.volume_key("p").view());
    }
    for (int i = 0; i < 3; ++i)
        for (int j = i + 1; j < 3; ++j) {
            CHECK(keys[i] != keys[j]);
            CHECK(fingerprints[i] != fingerprints[j]);
        }
}
