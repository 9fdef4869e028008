// Re-keying keeps the data: a known plain file is encrypted in place by `cryptsetup reencrypt --encrypt`,
// re-keyed by luksforge, and the data area is decrypted independently (OpenSSL AES-XTS with dm-crypt's
// plain64 IVs) with the old and the new volume key and compared with the plain file.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "dmcrypt_reference.hpp"
#include "testutil.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <openssl/evp.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;

std::string random_data(std::size_t size, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::string data(size, '\0');
    for (std::size_t i = 0; i + 8 <= size; i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(data.data() + i, &v, 8);
    }
    return data;
}

struct EncryptedImage {
    TempDir dir;
    std::filesystem::path image = dir / "disk.img";
    std::filesystem::path key_file = dir / "pass";
    std::string plain;
    std::string passphrase = "rekey passphrase";

    // 48 MiB of known data in an 80 MiB file; the last 32 MiB make room for the header (cryptsetup shifts the
    // data behind a 16 MiB header).
    explicit EncryptedImage(std::uint32_t sector_size) {
        plain = random_data(48 * kMiB, 42);
        write_file(image, plain);
        REQUIRE(::truncate(image.c_str(), 80 * kMiB) == 0);
        write_file(key_file, passphrase);
        run_ok({"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", "32M",
                "--sector-size", std::to_string(sector_size), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                "--key-file", key_file.string(), "--batch-mode", image.string()});
    }

    std::string data_area(const Inspection& info) const {
        return read_file_bytes(image, info.data_offset_bytes, plain.size());
    }
};

}  // namespace

TEST_CASE("rekey keeps the data: cryptsetup-encrypted plain file decrypts with the new key") {
    for (std::uint32_t sector_size : {4096u, 512u}) {
        CAPTURE(sector_size);
        EncryptedImage img(sector_size);
        Inspection before;
        SecretBuffer old_key;
        {
            Volume volume = Volume::open(img.image);
            before = volume.inspect();
            REQUIRE(before.sector_size == sector_size);
            old_key = volume.volume_key(img.passphrase);
            // Sanity of the independent decryption: the old key reproduces the plain file before re-keying.
            REQUIRE(decrypt_xts_plain64(img.data_area(before), old_key, sector_size) == img.plain);
        }
        const std::string old_ciphertext = img.data_area(before);

        RekeyResult result;
        std::uint64_t last_done = 0, calls = 0;
        {
            Volume volume = Volume::open(img.image);
            RekeyOptions options;
            options.progress = [&](const RekeyProgress& p) {
                CHECK(p.done_bytes >= last_done);
                last_done = p.done_bytes;
                ++calls;
                return true;
            };
            result = volume.rekey({img.passphrase}, options);
        }
        CHECK(result.completed);
        CHECK(calls > 0);
        CHECK(result.old_fingerprint == before.fingerprint);
        CHECK(result.new_fingerprint != result.old_fingerprint);
        REQUIRE(result.keyslot_map.size() == 1);
        CHECK(result.keyslot_map[0].first == 0);

        Volume volume = Volume::open(img.image);
        const Inspection after = volume.inspect();
        CHECK(after.fingerprint == result.new_fingerprint);
        CHECK_FALSE(after.reencryption_in_progress);
        CHECK(after.sector_size == sector_size);
        REQUIRE(after.keyslots.size() == 1);
        CHECK(after.keyslots[0].id == result.keyslot_map[0].second);
        CHECK(after.keyslots[0].pbkdf.type == Pbkdf::Type::pbkdf2);
        CHECK(after.keyslots[0].pbkdf.iterations == 1000);
        const SecretBuffer new_key = volume.volume_key(img.passphrase);
        CHECK_FALSE(new_key.equals(old_key.bytes()));
        const std::string new_ciphertext = img.data_area(after);
        CHECK(new_ciphertext != old_ciphertext);
        CHECK(decrypt_xts_plain64(new_ciphertext, new_key, sector_size) == img.plain);
        CHECK(decrypt_xts_plain64(new_ciphertext, old_key, sector_size) != img.plain);
        // cryptsetup agrees that the surviving keyslot opens.
        CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(after.keyslots[0].id),
                   "--key-file", img.key_file.string(), img.image.string()})
                  .exit_code == 0);
    }
}

TEST_CASE("rekey: surviving slots keep their PBKDF, tokens follow their slots, others refused or dropped") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 40 * kMiB);
    {
        FormatOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast();
        Volume volume = Volume::format(image, options);
        CHECK(volume.add_keyslot_by_volume_key("zero") == 0);
        CHECK(volume.add_keyslot_by_volume_key("one", Pbkdf::pbkdf2_fast(1500)) == 1);
        CHECK(volume.add_keyslot_by_volume_key("two") == 2);
        volume.set_token(R"({"type":"clevis","keyslots":["1"],"jwe":{}})", 0);
        volume.set_token(R"({"type":"other","keyslots":["2"]})", 3);
    }
    const std::string header_before = read_file_bytes(image, 0, 16 * kMiB);
    {
        Volume volume = Volume::open(image);
        try {
            volume.rekey({"zero", "one"});
            FAIL("rekey dropped keyslot 2 without being told to");
        } catch (const FormatError& e) {
            CHECK(std::string(e.what()).find("keyslot(s) 2") != std::string::npos);
        }
    }
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == header_before);

    Volume volume = Volume::open(image);
    const std::string old_fingerprint = volume.fingerprint();
    RekeyOptions options;
    options.drop_other_keyslots = true;
    const RekeyResult result = volume.rekey({"one", "zero"}, options);
    CHECK(result.completed);
    CHECK(result.old_fingerprint == old_fingerprint);
    CHECK(result.new_fingerprint != old_fingerprint);
    REQUIRE(result.keyslot_map.size() == 2);
    int new_one = -1, new_zero = -1;
    for (auto [from, to] : result.keyslot_map) {
        if (from == 1) new_one = to;
        if (from == 0) new_zero = to;
    }
    REQUIRE(new_one >= 0);
    REQUIRE(new_zero >= 0);
    CHECK(volume.test_passphrase("zero") == new_zero);
    CHECK(volume.test_passphrase("one") == new_one);
    CHECK_FALSE(volume.test_passphrase("two").has_value());
    CHECK(volume.keyslot(new_one)->pbkdf.iterations == 1500);
    CHECK(volume.keyslot(new_zero)->pbkdf.iterations == 1000);
    CHECK(volume.keyslots().size() == 2);
    CHECK(volume.token(0)->keyslots == std::vector<int>{new_one});
    CHECK(volume.token(3)->keyslots.empty());
}

TEST_CASE("rekey with drop_orphaned_tokens removes the tokens of dropped keyslots, keeps keyslot-less ones") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 40 * kMiB);
    {
        FormatOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast();
        Volume volume = Volume::format(image, options);
        CHECK(volume.add_keyslot_by_volume_key("zero") == 0);
        CHECK(volume.add_keyslot_by_volume_key("one") == 1);
        CHECK(volume.add_keyslot_by_volume_key("two") == 2);
        volume.set_token(R"({"type":"clevis","keyslots":["1"],"jwe":{}})", 0);
        volume.set_token(R"({"type":"other","keyslots":["0","2"]})", 1);
        volume.set_token(R"({"type":"state","keyslots":[]})", 2);
    }
    Volume volume = Volume::open(image);
    RekeyOptions options;
    options.drop_other_keyslots = true;
    options.drop_orphaned_tokens = true;
    const RekeyResult result = volume.rekey({"zero"}, options);
    REQUIRE(result.keyslot_map.size() == 1);
    const int new_zero = result.keyslot_map.front().second;
    CHECK(volume.keyslots().size() == 1);
    CHECK_FALSE(volume.token(0).has_value());                          // served only dropped keyslot 1
    CHECK(volume.token(1)->keyslots == std::vector<int>{new_zero});    // still serves the surviving keyslot
    REQUIRE(volume.token(2).has_value());                              // never served a keyslot
    CHECK(volume.token(2)->keyslots.empty());
}

TEST_CASE("rekey paused by the progress callback resumes with another call") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 64 * kMiB);
    {
        FormatOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast();
        Volume volume = Volume::format(image, options);
        volume.add_keyslot_by_volume_key("pass");
    }
    Volume volume = Volume::open(image);
    const std::string old_fingerprint = volume.fingerprint();
    RekeyOptions pause;
    pause.progress = [](const RekeyProgress&) { return false; };
    RekeyResult paused = volume.rekey({"pass"}, pause);
    CHECK_FALSE(paused.completed);
    CHECK(volume.inspect().reencryption_in_progress);
    const RekeyResult resumed = volume.rekey({"pass"});
    CHECK(resumed.completed);
    CHECK_FALSE(volume.inspect().reencryption_in_progress);
    CHECK(volume.fingerprint() != old_fingerprint);
    CHECK(volume.test_passphrase("pass").has_value());
    CHECK(volume.keyslots().size() == 1);
}

TEST_CASE("rekey interrupted by a dying process is resumed, and the data survives") {
    EncryptedImage img(4096);
    Inspection before;
    {
        Volume volume = Volume::open(img.image);
        before = volume.inspect();
    }
    // A child process starts re-keying and dies abruptly (no destructors, no cleanup) in the middle.
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        try {
            Volume volume = Volume::open(img.image);
            RekeyOptions options;
            options.max_hotzone_bytes = 4 * kMiB;
            options.progress = [](const RekeyProgress& p) {
                if (p.done_bytes > 0 && p.done_bytes < p.total_bytes) ::_exit(42);
                return true;
            };
            volume.rekey({img.passphrase}, options);
        } catch (...) {
            ::_exit(1);
        }
        ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 42);

    Volume volume = Volume::open(img.image);
    CHECK(volume.inspect().reencryption_in_progress);
    const RekeyResult result = volume.rekey({img.passphrase});
    CHECK(result.completed);
    const Inspection after = volume.inspect();
    CHECK_FALSE(after.reencryption_in_progress);
    CHECK(after.fingerprint != before.fingerprint);
    CHECK(after.keyslots.size() == 1);
    const SecretBuffer new_key = volume.volume_key(img.passphrase);
    CHECK(decrypt_xts_plain64(img.data_area(after), new_key, 4096) == img.plain);
}
