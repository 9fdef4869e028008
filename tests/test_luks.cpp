// LUKS2 core: format, keyslots, tokens, inspection and fingerprint, loop devices, and bad input that must
// fail clearly without changing a byte of the header.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "testutil.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "correct horse battery staple";

FormatOptions fast_options() {
    FormatOptions options;
    options.pbkdf = Pbkdf::pbkdf2_fast();
    return options;
}

Volume format_with_pass(const std::filesystem::path& image, const FormatOptions& options = fast_options()) {
    Volume volume = Volume::format(image, options);
    CHECK(volume.add_keyslot_by_volume_key(kPass) == 0);
    return volume;
}

// The LUKS2 header region (both metadata copies) of a default-layout image.
std::string header_bytes(const std::filesystem::path& image) { return read_file_bytes(image, 0, 16 * kMiB); }

}  // namespace

TEST_CASE("format with defaults: LUKS2, aes-xts-plain64, 512-bit key, 4096-byte sectors, fresh UUID") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 64 * kMiB);
    {
        Volume volume = format_with_pass(image);
        CHECK(volume.luks_version() == 2);
    }
    Volume volume = Volume::open(image, Volume::Access::read_only);
    const Inspection info = volume.inspect();
    CHECK(info.cipher == "aes-xts-plain64");
    CHECK(info.volume_key_bytes == 64);
    CHECK(info.sector_size == 4096);
    CHECK(info.uuid.size() == 36);
    CHECK(info.data_offset_bytes == 16 * kMiB);
    CHECK(info.device_bytes == 64 * kMiB);
    CHECK(info.fingerprint.size() == 64);
    REQUIRE(info.keyslots.size() == 1);
    CHECK(info.keyslots[0].id == 0);
    CHECK(info.keyslots[0].pbkdf.type == Pbkdf::Type::pbkdf2);
    CHECK(info.keyslots[0].pbkdf.iterations == 1000);
    CHECK(info.keyslots[0].key_bytes == 64);
    CHECK(info.keyslots[0].priority == "normal");
    CHECK(info.tokens.empty());
    CHECK_FALSE(info.reencryption_in_progress);
    CHECK(volume.test_passphrase(kPass) == 0);
    CHECK_FALSE(volume.test_passphrase("wrong").has_value());
}

TEST_CASE("format options: label, subsystem, uuid, sector size, metadata and keyslots sizes, argon2id") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 40 * kMiB);
    FormatOptions options;
    options.label = "forged";
    options.subsystem = "vmimage";
    options.uuid = "12345678-9abc-def0-1234-56789abcdef0";
    options.sector_size = 512;
    options.metadata_bytes = 64 * 1024;
    options.keyslots_bytes = 4 * kMiB;
    options.pbkdf = Pbkdf{Pbkdf::Type::argon2id, "sha256", 4, 32 * 1024, 1, 0};
    {
        Volume volume = Volume::format(image, options);
        volume.add_keyslot_by_volume_key(kPass);
    }
    const Inspection info = Volume::open(image).inspect();
    CHECK(info.label == "forged");
    CHECK(info.subsystem == "vmimage");
    CHECK(info.uuid == *options.uuid);
    CHECK(info.sector_size == 512);
    CHECK(info.metadata_bytes == 64 * 1024);
    CHECK(info.keyslots_bytes == 4 * kMiB);
    CHECK(info.data_offset_bytes == 5 * kMiB);  // 2 × 64 KiB + 4 MiB, aligned up to 1 MiB
    REQUIRE(info.keyslots.size() == 1);
    CHECK(info.keyslots[0].pbkdf.type == Pbkdf::Type::argon2id);
    CHECK(info.keyslots[0].pbkdf.iterations == 4);
    CHECK(info.keyslots[0].pbkdf.memory_kib == 32 * 1024);
    CHECK(info.keyslots[0].pbkdf.parallel == 1);
}

TEST_CASE("a supplied volume key is used; otherwise every format has a fresh one") {
    TempDir dir;
    make_sparse_file(dir / "a.img", 32 * kMiB);
    make_sparse_file(dir / "b.img", 32 * kMiB);
    make_sparse_file(dir / "c.img", 32 * kMiB);
    SecretBuffer a_key, b_key;
    {
        Volume a = format_with_pass(dir / "a.img");
        a_key = a.volume_key(kPass);
    }
    {
        Volume b = format_with_pass(dir / "b.img");
        b_key = b.volume_key(kPass);
    }
    CHECK(a_key.size() == 64);
    CHECK_FALSE(a_key.equals(b_key.bytes()));
    FormatOptions options = fast_options();
    options.volume_key = &a_key;
    Volume c = format_with_pass(dir / "c.img", options);
    CHECK(c.volume_key(kPass).equals(a_key.bytes()));
}

TEST_CASE("keyslots: add by passphrase with its own PBKDF, by volume key, remove, test one slot") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 32 * kMiB);
    Volume volume = format_with_pass(image);
    const int second = volume.add_keyslot(kPass, "second", Pbkdf::pbkdf2_fast(2000));
    CHECK(second == 1);
    CHECK(volume.keyslot(1)->pbkdf.iterations == 2000);
    const SecretBuffer key = volume.volume_key("second");
    const int third = volume.add_keyslot_by_volume_key("third", std::nullopt, 7, &key);
    CHECK(third == 7);
    CHECK(volume.test_passphrase("third", 7) == 7);
    CHECK_FALSE(volume.test_passphrase("third", 0).has_value());
    CHECK(volume.test_passphrase("second") == 1);
    CHECK_THROWS_AS(volume.add_keyslot("wrong", "x"), AuthError);
    CHECK_THROWS_AS(volume.volume_key("wrong"), AuthError);
    volume.remove_keyslot(1);
    CHECK_FALSE(volume.keyslot(1).has_value());
    CHECK_FALSE(volume.test_passphrase("second").has_value());
    CHECK_THROWS_AS(volume.remove_keyslot(1), NotFoundError);
    CHECK(volume.keyslots().size() == 2);
}

TEST_CASE("tokens: set, get, list, assign, unassign, remove") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 32 * kMiB);
    Volume volume = format_with_pass(image);
    volume.add_keyslot(kPass, "two", Pbkdf::pbkdf2_fast());
    const int id = volume.set_token(R"({"type":"clevis","keyslots":["0"],"jwe":{"ciphertext":"abc"}})");
    CHECK(id == 0);
    auto token = volume.token(id);
    REQUIRE(token);
    CHECK(token->type == "clevis");
    CHECK(token->keyslots == std::vector<int>{0});
    volume.assign_token(id, 1);
    CHECK(volume.token(id)->keyslots == std::vector<int>{0, 1});
    volume.unassign_token(id, 0);
    CHECK(volume.token(id)->keyslots == std::vector<int>{1});
    CHECK(volume.set_token(R"({"type":"other","keyslots":[]})", 5) == 5);
    CHECK(volume.tokens().size() == 2);
    CHECK_THROWS_AS(volume.set_token("not json"), FormatError);
    CHECK_THROWS_AS(volume.set_token(R"({"keyslots":[]})"), FormatError);
    volume.remove_token(5);
    CHECK_FALSE(volume.token(5).has_value());
    CHECK_THROWS_AS(volume.remove_token(5), NotFoundError);
    const std::string json = volume.inspect().to_json();
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE(root != nullptr);
    CHECK(json_array_size(json_object_get(root, "tokens")) == 1);
    CHECK(json_array_size(json_object_get(root, "keyslots")) == 2);
    CHECK(std::string(json_string_value(json_object_get(root, "fingerprint"))) == volume.fingerprint());
    json_decref(root);
}

TEST_CASE("remove_keyslot keeps tokens (as luksKillSlot); remove_keyslot_and_tokens drops those of the slot alone") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 32 * kMiB);
    Volume volume = format_with_pass(image);
    CHECK(volume.add_keyslot(kPass, "one", Pbkdf::pbkdf2_fast()) == 1);
    CHECK(volume.add_keyslot(kPass, "two", Pbkdf::pbkdf2_fast()) == 2);
    CHECK(volume.add_keyslot(kPass, "three", Pbkdf::pbkdf2_fast()) == 3);
    CHECK(volume.set_token(R"({"type":"clevis","keyslots":["1"],"jwe":{}})", 0) == 0);
    CHECK(volume.set_token(R"({"type":"other","keyslots":["1","2"]})", 1) == 1);
    CHECK(volume.set_token(R"({"type":"state","keyslots":[]})", 2) == 2);
    CHECK(volume.set_token(R"({"type":"clevis","keyslots":["3"],"jwe":{}})", 3) == 3);

    // The plain removal only unassigns: token 3 stays, assigned to nothing.
    volume.remove_keyslot(3);
    REQUIRE(volume.token(3).has_value());
    CHECK(volume.token(3)->keyslots.empty());

    // Slot 1 alone carries token 0; token 1 also serves slot 2, token 2 serves none: both stay.
    CHECK(volume.remove_tokens_only_of(2).empty());
    CHECK(volume.remove_keyslot_and_tokens(1) == std::vector<int>{0});
    CHECK_FALSE(volume.keyslot(1).has_value());
    CHECK_FALSE(volume.token(0).has_value());
    CHECK(volume.token(1)->keyslots == std::vector<int>{2});
    CHECK(volume.token(2)->keyslots.empty());
    CHECK(volume.remove_keyslot_and_tokens(2) == std::vector<int>{1});
    CHECK_FALSE(volume.token(1).has_value());
    CHECK(volume.token(2).has_value());
    CHECK_THROWS_AS(volume.remove_keyslot_and_tokens(2), NotFoundError);
    CHECK(volume.keyslots().size() == 1);
    CHECK(volume.test_passphrase(kPass) == 0);
}

TEST_CASE("fingerprint: equal for a cp clone, different for two formats, public data only") {
    TempDir dir;
    make_sparse_file(dir / "a.img", 32 * kMiB);
    make_sparse_file(dir / "b.img", 32 * kMiB);
    { format_with_pass(dir / "a.img"); }
    { format_with_pass(dir / "b.img"); }
    run_ok({"cp", "--sparse=always", (dir / "a.img").string(), (dir / "clone.img").string()});
    const std::string a = Volume::open(dir / "a.img", Volume::Access::read_only).fingerprint();
    const std::string b = Volume::open(dir / "b.img", Volume::Access::read_only).fingerprint();
    const std::string clone = Volume::open(dir / "clone.img", Volume::Access::read_only).fingerprint();
    CHECK(a == clone);
    CHECK(a != b);
    // Adding a keyslot does not change the key, so it does not change the fingerprint.
    {
        Volume volume = Volume::open(dir / "a.img");
        volume.add_keyslot(kPass, "more", Pbkdf::pbkdf2_fast());
        CHECK(volume.fingerprint() == a);
    }
}

TEST_CASE("loop device: format and inspect through /dev/loopN, partition window") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 80 * kMiB);
    {
        LoopDevice loop(image, 8 * kMiB, 64 * kMiB);
        {
            Volume volume = format_with_pass(loop.path());
            CHECK(volume.inspect().device_bytes == 64 * kMiB);
            CHECK(volume.inspect().sector_size == 4096);
        }
        CHECK(Volume::open(loop.path()).test_passphrase(kPass) == 0);
    }
    // The header landed at the partition offset, not at the start of the file.
    CHECK(read_file_bytes(image, 8 * kMiB, 4) == "LUKS");
    CHECK(read_file_bytes(image, 0, 4) == std::string(4, '\0'));
}

TEST_CASE("bad input: clear errors and header bytes unchanged") {
    TempDir dir;
    SUBCASE("missing file") {
        CHECK_THROWS_AS(Volume::open(dir / "nope.img"), NotFoundError);
        CHECK_THROWS_AS(Volume::format(dir / "nope.img"), NotFoundError);
    }
    SUBCASE("not LUKS") {
        const auto image = dir / "plain.img";
        write_file(image, std::string(1 << 20, 'x'));
        const std::string before = read_file_bytes(image);
        try {
            Volume::open(image);
            FAIL("opened a non-LUKS file");
        } catch (const FormatError& e) {
            CHECK(std::string(e.what()).find("is not a LUKS volume") != std::string::npos);
        }
        CHECK_FALSE(Volume::probe(image).has_value());
        CHECK(read_file_bytes(image) == before);
    }
    SUBCASE("LUKS1") {
        const auto image = dir / "luks1.img";
        make_sparse_file(image, 32 * kMiB);
        write_file(dir / "key", kPass);
        run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
                "--key-file", (dir / "key").string(), image.string()});
        const std::string before = header_bytes(image);
        try {
            Volume::open(image);
            FAIL("opened LUKS1 as LUKS2");
        } catch (const FormatError& e) {
            CHECK(std::string(e.what()).find("is LUKS1; luksforge needs LUKS2") != std::string::npos);
        }
        auto probed = Volume::probe(image);
        REQUIRE(probed.has_value());
        CHECK(probed->luks_version() == 1);
        CHECK(header_bytes(image) == before);
    }
    SUBCASE("wrong passphrase") {
        const auto image = dir / "disk.img";
        make_sparse_file(image, 32 * kMiB);
        { format_with_pass(image); }
        const std::string before = header_bytes(image);
        Volume volume = Volume::open(image);
        CHECK_THROWS_AS(volume.add_keyslot("wrong", "new"), AuthError);
        CHECK_THROWS_AS(volume.rekey({"wrong"}), AuthError);
        CHECK(header_bytes(image) == before);
    }
    SUBCASE("image too small") {
        const auto image = dir / "small.img";
        write_file(image, std::string(8 * kMiB, 'y'));
        const std::string before = read_file_bytes(image);
        try {
            Volume::format(image, fast_options());
            FAIL("formatted a too small image");
        } catch (const FormatError& e) {
            CHECK(std::string(e.what()).find("too small") != std::string::npos);
            CHECK(std::string(e.what()).find("need at least") != std::string::npos);
        }
        CHECK(read_file_bytes(image) == before);
    }
    SUBCASE("locked by another luksforge process") {
        const auto image = dir / "disk.img";
        make_sparse_file(image, 32 * kMiB);
        { format_with_pass(image); }
        write_file(dir / "pass", "new");
        const std::string before = header_bytes(image);
        // A child process holds the lock; this process must be refused.
        int ready[2];
        REQUIRE(::pipe(ready) == 0);
        int release[2];
        REQUIRE(::pipe(release) == 0);
        const pid_t child = ::fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            ::close(ready[0]);
            ::close(release[1]);
            try {
                DeviceLock lock = DeviceLock::acquire(image);
                (void)!::write(ready[1], "k", 1);
                char c;
                (void)!::read(release[0], &c, 1);
            } catch (...) {
                ::_exit(1);
            }
            ::_exit(0);
        }
        ::close(ready[1]);
        ::close(release[0]);
        char c = 0;
        REQUIRE(::read(ready[0], &c, 1) == 1);
        try {
            Volume::open(image);
            FAIL("opened a locked volume");
        } catch (const BusyError& e) {
            CHECK(std::string(e.what()).find("is locked by another luksforge process") != std::string::npos);
        }
        CHECK_THROWS_AS(Volume::format(image, fast_options()), BusyError);
        ::close(release[1]);
        ::close(ready[0]);
        int status = 0;
        ::waitpid(child, &status, 0);
        CHECK(header_bytes(image) == before);
        // Released: now it opens.
        CHECK(Volume::open(image).test_passphrase(kPass) == 0);
    }
    SUBCASE("block device in use") {
        const auto image = dir / "disk.img";
        make_sparse_file(image, 32 * kMiB);
        LoopDevice loop(image);
        { format_with_pass(loop.path()); }
        const std::string before = header_bytes(image);
        // Claim the device exclusively, as a mount or device-mapper would.
        const int holder = ::open(loop.path().c_str(), O_RDONLY | O_EXCL);
        REQUIRE(holder >= 0);
        CHECK_THROWS_AS(Volume::open(loop.path()), BusyError);
        CHECK_THROWS_AS(Volume::format(loop.path(), fast_options()), BusyError);
        CHECK_NOTHROW(Volume::open(loop.path(), Volume::Access::read_only));
        ::close(holder);
        CHECK(header_bytes(image) == before);
    }
}

TEST_CASE("in-process locking is re-entrant: a held DeviceLock does not lock out this process") {
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 32 * kMiB);
    DeviceLock lock = DeviceLock::acquire(image);
    Volume volume = format_with_pass(image);
    CHECK(volume.test_passphrase(kPass) == 0);
}
