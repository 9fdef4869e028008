// `luksforge audit` keeps Tang apart from the data: private JWKs inside plaintext partitions of scanned images
// (an ext4 file system holding a copy of /var/db/tang, made with mke2fs -d: no mount), and bindings whose
// trusted Tang key (thp or kid) is on the same image or in a host Tang key directory. Real Tang, real images.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <jansson.h>

#include <fstream>
#include <set>
#include <string>

using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t p1_offset = 1 * kMiB, p1_size = 16 * kMiB, p2_offset = 17 * kMiB, p2_size = 40 * kMiB;

struct Json {
    json_t* root = nullptr;
    explicit Json(const std::string& text) {
        json_error_t error;
        root = json_loads(text.c_str(), 0, &error);
        REQUIRE_MESSAGE(root != nullptr, text);
    }
    ~Json() { json_decref(root); }
    json_t* operator[](const char* key) const { return json_object_get(root, key); }
};

std::string str(const json_t* o, const char* key) {
    const json_t* v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : std::string();
}

// The thumbprints of every key in a tangd key directory.
std::set<std::string> key_thumbprints(const fs::path& dir) {
    std::set<std::string> thps;
    for (const auto& entry : fs::directory_iterator(dir))
        if (entry.path().extension() == ".jwk") {
            std::string thp = run_ok({"jose", "jwk", "thp", "-i", entry.path().string()});
            while (!thp.empty() && thp.back() == '\n') thp.pop_back();
            thps.insert(thp);
        }
    return thps;
}

// A plaintext ext4 file system image of `bytes` holding `root` (mke2fs -d copies a directory tree in).
void make_ext4(const fs::path& file, std::uint64_t bytes, const fs::path& root) {
    make_sparse_file(file, bytes);
    run_ok({"mkfs.ext4", "-q", "-F", "-d", root.string(), file.string()});
}

void copy_into(const fs::path& image, std::uint64_t offset, const fs::path& from) {
    run_ok({"dd", "if=" + from.string(), "of=" + image.string(), "bs=1M", "seek=" + std::to_string(offset / kMiB),
            "conv=notrunc,sparse", "status=none"});
}

// Format `device` with a fast passphrase keyslot and bind it to `tang` (pinned thumbprint).
void format_and_bind(const fs::path& device, const TangServer& tang, const fs::path& pass) {
    run_ok({LUKSFORGE_CLI, "format", device.string(), "--passphrase-file", pass.string(), "--pbkdf", "pbkdf2",
            "--pbkdf-iterations", "1000", "--force"});
    run_ok({LUKSFORGE_CLI, "bind", device.string(), "tang",
            R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})", "--passphrase-file",
            pass.string()});
}

}  // namespace

TEST_CASE("audit finds a copied /var/db/tang in a plaintext partition and the binding on the same image that trusts it") {
    TangServer tang;
    TempDir dir;
    write_file(dir / "pass", "audit passphrase");
    // Partition 1: the system's plaintext /boot-like file system, into which a careless build copied tangd's keys.
    fs::create_directories(dir / "root/var/db/tang");
    fs::create_directories(dir / "root/etc");
    write_file(dir / "root/etc/hostname", "image\n");
    for (const auto& entry : fs::directory_iterator(tang.key_dir()))
        fs::copy_file(entry.path(), dir / "root/var/db/tang" / entry.path().filename());
    make_ext4(dir / "p1.ext4", p1_size, dir / "root");

    const fs::path image = dir / "disk.img";
    make_sparse_file(image, 64 * kMiB);
    run_ok({"sfdisk", "--quiet", image.string()},
           "label: gpt\nstart=2048, size=" + std::to_string(p1_size / 512) + "\nstart=" +
               std::to_string(p2_offset / 512) + ", size=" + std::to_string(p2_size / 512) + "\n");
    copy_into(image, p1_offset, dir / "p1.ext4");
    {
        LoopDevice p2(image, p2_offset, p2_size);
        format_and_bind(p2.path(), tang, dir / "pass");
    }

    const RunResult r = run_cli({"audit", image.string(), "--json", "--strict", "--tang-key-dir", (dir / "none").string()});
    CHECK_MESSAGE(r.exit_code == 9, r.err);
    Json report(r.out);
    const std::set<std::string> expected = key_thumbprints(tang.key_dir());
    REQUIRE(expected.size() == 2);  // tangd-keygen: one signing, one exchange key
    std::set<std::string> found;
    std::size_t i;
    json_t* key;
    json_array_foreach(report["tang_keys_in_images"], i, key) {
        CHECK(json_integer_value(json_object_get(key, "partition")) == 1);
        CHECK(str(key, "kty") == "EC");
        const json_int_t offset = json_integer_value(json_object_get(key, "offset"));
        CHECK(offset >= static_cast<json_int_t>(p1_offset));
        CHECK(offset < static_cast<json_int_t>(p1_offset + p1_size));
        found.insert(str(key, "thumbprint"));
    }
    CHECK(found == expected);
    std::set<std::string> roles;
    json_t* exposure;
    json_array_foreach(report["tang_key_exposures"], i, exposure) {
        CHECK(json_is_true(json_object_get(exposure, "same_image")));
        CHECK(str(exposure, "volume").find("partition 2") != std::string::npos);
        CHECK(str(exposure, "url") == tang.url());
        CHECK(expected.count(str(exposure, "thumbprint")) == 1);
        roles.insert(str(exposure, "role"));
    }
    // The binding pins the signing key (thp) and encrypts to the exchange key (kid): both are exposed.
    CHECK(roles == std::set<std::string>{"exchange", "signing"});
    if (roles.count("signing")) {
        json_array_foreach(report["tang_key_exposures"], i, exposure) {
            if (str(exposure, "role") == "signing") CHECK(str(exposure, "thumbprint") == tang.thumbprint());
        }
    }

    const RunResult text = run_cli({"audit", image.string(), "--tang-key-dir", (dir / "none").string()});
    CHECK(text.exit_code == 0);
    CHECK(text.out.find("TANG PRIVATE KEY in " + image.string() + " partition 1") != std::string::npos);
    CHECK(text.out.find("EXPOSED " + image.string() + " partition 2 keyslot 1") != std::string::npos);
    CHECK(text.out.find("on the same image") != std::string::npos);

    // Opting out of the scan reports nothing about Tang keys.
    const RunResult off = run_cli({"audit", image.string(), "--json", "--strict", "--no-tang-key-scan"});
    CHECK_MESSAGE(off.exit_code == 0, off.err);
    Json quiet(off.out);
    CHECK(json_array_size(quiet["tang_keys_in_images"]) == 0);
    CHECK(json_array_size(quiet["tang_key_exposures"]) == 0);
}

TEST_CASE("audit reports a binding whose Tang keys are on the audited host, and nothing for a clean image") {
    TangServer tang;
    TempDir dir;
    write_file(dir / "pass", "audit passphrase");
    const fs::path image = dir / "bare.img";
    make_sparse_file(image, 32 * kMiB);
    format_and_bind(image, tang, dir / "pass");
    // A clean plaintext image next to it: files, but no key.
    fs::create_directories(dir / "clean/etc");
    write_file(dir / "clean/etc/motd", R"({"kty":"EC","crv":"P-521","x":"public only, no d"})");
    make_ext4(dir / "clean.ext4", 8 * kMiB, dir / "clean");

    const RunResult r = run_cli({"audit", image.string(), (dir / "clean.ext4").string(), "--json", "--strict",
                                 "--tang-key-dir", tang.key_dir().string()});
    CHECK_MESSAGE(r.exit_code == 9, r.err);
    Json report(r.out);
    CHECK(json_array_size(report["tang_keys_in_images"]) == 0);
    REQUIRE(json_array_size(report["tang_key_exposures"]) == 2);
    std::size_t i;
    json_t* exposure;
    json_array_foreach(report["tang_key_exposures"], i, exposure) {
        CHECK(json_is_false(json_object_get(exposure, "same_image")));
        CHECK(str(exposure, "key_location").rfind(tang.key_dir().string(), 0) == 0);
    }

    // The same audit on a machine without those keys: clean.
    const RunResult elsewhere = run_cli({"audit", image.string(), (dir / "clean.ext4").string(), "--json", "--strict",
                                         "--tang-key-dir", (dir / "none").string()});
    CHECK_MESSAGE(elsewhere.exit_code == 0, elsewhere.err);
    Json clean(elsewhere.out);
    CHECK(json_array_size(clean["tang_key_exposures"]) == 0);
    CHECK(json_array_size(clean["tang_keys_in_images"]) == 0);

    // After a rotation the old keys are hidden (.THP.jwk) but still recover: still exposed.
    tang.rotate();
    const RunResult rotated = run_cli({"audit", image.string(), "--json", "--tang-key-dir", tang.key_dir().string()});
    Json after(rotated.out);
    CHECK(json_array_size(after["tang_key_exposures"]) == 2);
}

TEST_CASE("the byte scan finds a private JWK across its 4 MiB chunk boundary and in a sparse image's data only") {
    TangServer tang;
    TempDir dir;
    const fs::path image = dir / "raw.img";
    make_sparse_file(image, 24 * kMiB);
    fs::path key;
    for (const auto& entry : fs::directory_iterator(tang.key_dir())) key = entry.path();
    std::string jwk = read_file_bytes(key);
    while (!jwk.empty() && jwk.back() == '\n') jwk.pop_back();
    // Straddling the first chunk boundary, and once more deep inside the sparse tail.
    const std::uint64_t offsets[] = {4 * kMiB - jwk.size() / 2, 20 * kMiB + 123};
    {
        std::fstream out(image, std::ios::in | std::ios::out | std::ios::binary);
        for (std::uint64_t offset : offsets) {
            out.seekp(static_cast<std::streamoff>(offset));
            out.write(jwk.data(), static_cast<std::streamsize>(jwk.size()));
        }
    }
    const RunResult r = run_cli({"audit", image.string(), "--json", "--tang-key-dir", (dir / "none").string()});
    CHECK_MESSAGE(r.exit_code == 0, r.err);
    Json report(r.out);
    REQUIRE(json_array_size(report["tang_keys_in_images"]) == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        const json_t* found = json_array_get(report["tang_keys_in_images"], i);
        CHECK(json_integer_value(json_object_get(found, "offset")) == static_cast<json_int_t>(offsets[i]));
        CHECK(json_is_null(json_object_get(found, "partition")));
    }
}
