// The one-pass data path against libcryptsetup's own re-encryption: the same volume re-keyed by libcryptsetup
// (Volume::rekey) and by the one-pass copy with libcryptsetup's new key must hold identical ciphertext, sector
// by sector, for 512- and 4096-byte sectors and 256/512-bit XTS keys; holes stay holes; the header written last
// makes a volume libcryptsetup and stock cryptsetup open; unsupported ciphers are refused with a reason.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "dmcrypt_reference.hpp"
#include "testutil.hpp"

#include "datapath/instance_header.hpp"
#include "datapath/reencrypt_copy.hpp"
#include "datapath/sector_stream.hpp"
#include "datapath/segment_layout.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <variant>

using namespace luksforge;
using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "datapath test passphrase";

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) { REQUIRE(fd >= 0); }
    ~Fd() { ::close(fd); }
};

// A LUKS2 file of `bytes` whose data area holds random ciphertext except a hole at [hole_at, hole_at + 4 MiB)
// of the data area. Any bytes are a valid ciphertext, so this is a volume with (random) content.
void make_volume(const fs::path& path, std::uint32_t sector_size, std::size_t key_bytes, std::uint64_t bytes,
                 const std::string& cipher = "aes", const std::string& mode = "xts-plain64") {
    make_sparse_file(path, bytes);
    FormatOptions options;
    options.cipher = cipher;
    options.cipher_mode = mode;
    options.sector_size = sector_size;
    options.volume_key_bytes = key_bytes;
    options.keyslots_bytes = 1 * kMiB;  // data at 2 MiB: small, quick test volumes
    options.pbkdf = Pbkdf::pbkdf2_fast(1000);
    Volume volume = Volume::format(path, options);
    volume.add_keyslot_by_volume_key(kPass);
}

void fill_random(const fs::path& path, std::uint64_t offset, std::uint64_t bytes) {
    run_ok({"dd", "if=/dev/urandom", "of=" + path.string(), "bs=64K", "seek=" + std::to_string(offset) + "B",
            "count=" + std::to_string(bytes) + "B", "oflag=seek_bytes", "iflag=count_bytes", "conv=notrunc",
            "status=none"});
}

datapath::SegmentLayout layout_of(const fs::path& path) {
    Volume volume = Volume::open(path, Volume::Access::read_only);
    auto layout = datapath::read_segment_layout(volume);
    REQUIRE_MESSAGE(std::holds_alternative<datapath::SegmentLayout>(layout),
                    (std::holds_alternative<std::string>(layout) ? std::get<std::string>(layout) : ""));
    return std::get<datapath::SegmentLayout>(layout);
}

std::uint64_t allocated_bytes(const fs::path& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// The index of the first differing `sector`-sized block, or -1.
long first_difference(const std::string& a, const std::string& b, std::uint32_t sector) {
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); i += sector)
        if (a.compare(i, sector, b, i, sector) != 0) return static_cast<long>(i / sector);
    return -1;
}

}  // namespace

TEST_CASE("one-pass re-encryption equals libcryptsetup's re-encryption sector by sector") {
    struct Shape {
        std::uint32_t sector;
        std::size_t key_bytes;
    };
    for (const Shape shape : {Shape{512, 64}, Shape{4096, 64}, Shape{4096, 32}, Shape{512, 32}}) {
        CAPTURE(shape.sector);
        CAPTURE(shape.key_bytes);
        TempDir dir;
        const fs::path base = dir / "base.img";
        make_volume(base, shape.sector, shape.key_bytes, 14 * kMiB);
        const datapath::SegmentLayout layout = layout_of(base);
        REQUIRE(layout.data_offset == 2 * kMiB);
        const std::uint64_t data_bytes = 12 * kMiB;
        fill_random(base, layout.data_offset, 5 * kMiB);                   // data, then a 4 MiB hole,
        fill_random(base, layout.data_offset + 9 * kMiB, 3 * kMiB);        // then data to the end

        // libcryptsetup re-keys a copy; its new volume key drives the one-pass copy.
        const fs::path reference = dir / "reference.img";
        run_ok({"cp", "--sparse=always", base.string(), reference.string()});
        SecretBuffer old_key = Volume::open(base, Volume::Access::read_only).volume_key(kPass);
        SecretBuffer new_key;
        {
            Volume volume = Volume::open(reference);
            RekeyResult rekeyed = volume.rekey({kPass});
            REQUIRE(rekeyed.completed);
            new_key = volume.volume_key(kPass);
        }
        CHECK_FALSE(new_key.equals(old_key.bytes()));
        const std::string expected = read_file_bytes(reference, layout.data_offset, data_bytes);
        REQUIRE(expected.size() == data_bytes);

        datapath::OnePassCopy copy;
        copy.source = base;
        copy.layout = layout;
        copy.old_key = &old_key;
        copy.new_key = &new_key;
        copy.stream.threads = 2;
        copy.stream.chunk_bytes = 256 << 10;  // many chunks across both workers

        {
            // Dense: every sector as libcryptsetup writes it.
            const fs::path out = dir / "dense.img";
            copy.keep_holes = false;
            Fd fd(::open(out.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
            datapath::OnePassStats stats = datapath::reencrypt_copy(copy, fd.fd);
            CHECK(stats.data_bytes == data_bytes);
            CHECK(stats.hole_bytes == 0);
            CHECK(stats.threads == 2);
            CHECK(fs::file_size(out) == fs::file_size(base));
            const std::string got = read_file_bytes(out, layout.data_offset, data_bytes);
            CHECK(first_difference(got, expected, shape.sector) == -1);
            if (shape.key_bytes == 64) {
                // And independently of both: OpenSSL decrypts both to the same plaintext.
                const std::string base_cipher = read_file_bytes(base, layout.data_offset, data_bytes);
                CHECK(decrypt_xts_plain64(got, new_key, shape.sector) ==
                      decrypt_xts_plain64(base_cipher, old_key, shape.sector));
            }
            // The header area is left for the header, written last.
            CHECK(read_file_bytes(out, 0, layout.data_offset) == std::string(layout.data_offset, '\0'));
        }

        {
            // Several instances in one pass (stamp): the base read and decrypted once, encrypted with each key.
            const fs::path a = dir / "a.img", b = dir / "b.img";
            SecretBuffer other_key = random_secret(shape.key_bytes);
            copy.keep_holes = false;
            Fd fa(::open(a.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
            Fd fb(::open(b.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
            datapath::OnePassStats stats =
                datapath::reencrypt_copies(copy, {{fa.fd, &new_key}, {fb.fd, &other_key}});
            CHECK(stats.data_bytes == data_bytes);
            const std::string got_a = read_file_bytes(a, layout.data_offset, data_bytes);
            const std::string got_b = read_file_bytes(b, layout.data_offset, data_bytes);
            CHECK(first_difference(got_a, expected, shape.sector) == -1);
            CHECK(got_a != got_b);
            if (shape.key_bytes == 64)
                CHECK(decrypt_xts_plain64(got_b, other_key, shape.sector) == decrypt_xts_plain64(got_a, new_key, shape.sector));
        }
        {
            // Sparse: holes stay holes, the data sectors match, time in proportion to the data.
            const fs::path out = dir / "sparse.img";
            copy.keep_holes = true;
            Fd fd(::open(out.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
            datapath::OnePassStats stats = datapath::reencrypt_copy(copy, fd.fd);
            CHECK(stats.data_bytes == 8 * kMiB);
            CHECK(stats.hole_bytes == 4 * kMiB);
            CHECK(allocated_bytes(out) <= 8 * kMiB + 64 * 1024);
            const std::string got = read_file_bytes(out, layout.data_offset, data_bytes);
            CHECK(got.compare(0, 5 * kMiB, expected, 0, 5 * kMiB) == 0);
            CHECK(got.compare(9 * kMiB, 3 * kMiB, expected, 9 * kMiB, 3 * kMiB) == 0);
            CHECK(got.substr(5 * kMiB, 4 * kMiB) == std::string(4 * kMiB, '\0'));

            // The header, made apart and written last, turns the copy into the re-keyed volume.
            const fs::path header = dir / "header.scratch";
            datapath::format_instance_header(header, fs::file_size(base), layout, new_key);
            {
                Volume scratch = Volume::open(header);
                scratch.add_keyslot_by_volume_key("instance passphrase", Pbkdf::pbkdf2_fast(1000), -1, &new_key);
            }
            CHECK_FALSE(Volume::probe(out).has_value());  // not a LUKS volume until the header is there
            datapath::write_instance_header(header, fd.fd, 0, layout.data_offset);
            Volume instance = Volume::open(out, Volume::Access::read_only);
            const Inspection info = instance.inspect();
            CHECK(info.uuid == layout.uuid);
            CHECK(info.data_offset_bytes == layout.data_offset);
            CHECK(info.sector_size == shape.sector);
            CHECK(info.volume_key_bytes == shape.key_bytes);
            CHECK(info.keyslots_bytes == layout.keyslots_bytes);
            CHECK(info.cipher == "aes-xts-plain64");
            CHECK(instance.volume_key("instance passphrase").equals(new_key.bytes()));
            CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", out.string()}, "instance passphrase")
                      .exit_code == 0);
            CHECK(run({"cryptsetup", "luksDump", out.string()}).exit_code == 0);
        }
    }
}

TEST_CASE("ciphers the one-pass path does not implement are refused with the reason") {
    TempDir dir;
    const fs::path cbc = dir / "cbc.img";
    make_volume(cbc, 512, 32, 4 * kMiB, "aes", "cbc-essiv:sha256");
    Volume volume = Volume::open(cbc, Volume::Access::read_only);
    auto layout = datapath::read_segment_layout(volume);
    REQUIRE(std::holds_alternative<std::string>(layout));
    CHECK(std::get<std::string>(layout).find("cbc-essiv") != std::string::npos);

    datapath::CipherSpec serpent{"serpent", "xts-plain64", 64, 4096};
    REQUIRE(datapath::unsupported_reason(serpent).has_value());
    CHECK(datapath::unsupported_reason(serpent)->find("serpent") != std::string::npos);
    datapath::CipherSpec plain{"aes", "xts-plain", 64, 512};
    CHECK(datapath::unsupported_reason(plain).has_value());
    SecretBuffer key(64);
    CHECK_THROWS_AS(datapath::XtsCipher(serpent, key, datapath::XtsCipher::Direction::encrypt), FormatError);
    datapath::CipherSpec aes{"aes", "xts-plain64", 64, 4096};
    SecretBuffer short_key(32);
    CHECK_THROWS_AS(datapath::XtsCipher(aes, short_key, datapath::XtsCipher::Direction::encrypt), FormatError);
}

// The engine itself: every byte goes through once, to every lane, whatever order the workers and writers take;
// a failing writer stops the reader and workers (no hang) and its error comes back to the caller.
TEST_CASE("the read/transform/write pipeline delivers every chunk to every lane and stops on a writer's error") {
    TempDir dir;
    const fs::path source = dir / "source.bin";
    fill_random(source, 0, 9 * kMiB + 4096);  // the last chunk is short
    Fd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
    const std::uint64_t bytes = 9 * kMiB + 4096;
    std::string expected(bytes, '\0');
    datapath::read_exact(in.fd, expected.data(), bytes, 0, "the source");

    std::vector<std::string> lanes(3, std::string(bytes, '\0'));
    std::mutex mutex;
    datapath::StreamPlan plan;
    plan.lanes = lanes.size();
    plan.writers_per_lane = 2;
    plan.scratch_buffers = 1;
    plan.make_worker = [] {
        return datapath::ChunkTransform([](std::uint8_t* data, std::size_t n, std::uint64_t, std::uint8_t* const* scratch,
                                           const std::uint8_t** out) {
            std::memcpy(scratch[0], data, n);
            out[0] = data;
            out[1] = scratch[0];
            out[2] = data;
        });
    };
    plan.write = [&](std::size_t lane, const std::uint8_t* data, std::size_t n, std::uint64_t offset) {
        CHECK(reinterpret_cast<std::uintptr_t>(data) % 4096 == 0);
        std::lock_guard lock(mutex);
        std::memcpy(lanes[lane].data() + offset, data, n);
    };
    datapath::StreamOptions options;
    options.threads = 2;
    options.chunk_bytes = 512 << 10;
    std::uint64_t last_done = 0;
    options.progress = [&](std::uint64_t done, std::uint64_t total) {
        CHECK(total == bytes);
        CHECK(done >= last_done);
        last_done = done;
    };
    const auto result = datapath::stream_extents(in.fd, 0, {{0, bytes}}, bytes, 512, plan, options);
    CHECK(result.bytes_transformed == bytes);
    CHECK(result.chunk_bytes == 512u << 10);
    CHECK(last_done == bytes);
    for (const std::string& lane : lanes) CHECK(lane == expected);

    std::atomic<int> writes{0};
    plan.write = [&](std::size_t, const std::uint8_t*, std::size_t, std::uint64_t) {
        if (++writes == 5) throw Error(ENOSPC, "disk full (test)");
    };
    CHECK_THROWS_WITH_AS(datapath::stream_extents(in.fd, 0, {{0, bytes}}, bytes, 512, plan, options),
                         "disk full (test)", Error);
}
