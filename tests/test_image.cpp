// Disk images: libblkid probing of GPT, MBR and bare LUKS images (cross-checked with sfdisk and cryptsetup),
// LUKS2 target selection, and loop attachments that never leak (exceptions, moves, kill -9).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "testutil.hpp"

#include <luksforge/error.hpp>
#include <luksforge/image.hpp>

#include <jansson.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <thread>

using namespace luksforge;
using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const char* kEfiType = "C12A7328-F81F-11D2-BA4B-00A0C93EC3B8";
const char* kLinuxType = "0FC63DAF-8483-4772-8E79-3D69E4C477E4";

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

// luksFormat [offset, offset+size) of `image` through a loop device; returns the LUKS UUID.
std::string luks_format_window(const fs::path& image, std::uint64_t offset, std::uint64_t size,
                               const std::string& type = "luks2") {
    LoopDevice loop(image, offset, size);
    run_ok({"cryptsetup", "luksFormat", "-q", "--type", type, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", "-", loop.path().string()},
           "build passphrase");
    return trim(run_ok({"cryptsetup", "luksUUID", loop.path().string()}));
}

struct SfdiskPartition {
    std::uint64_t start_bytes, size_bytes;
    std::string type, uuid;
};

// sfdisk's own view of the table, to cross-check libblkid.
std::vector<SfdiskPartition> sfdisk_partitions(const fs::path& image) {
    std::string json = run_ok({"sfdisk", "-J", image.string()});
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE(root != nullptr);
    std::vector<SfdiskPartition> result;
    json_t* parts = json_object_get(json_object_get(root, "partitiontable"), "partitions");
    std::size_t i;
    json_t* p;
    json_array_foreach(parts, i, p) {
        SfdiskPartition s;
        s.start_bytes = static_cast<std::uint64_t>(json_integer_value(json_object_get(p, "start"))) * 512;
        s.size_bytes = static_cast<std::uint64_t>(json_integer_value(json_object_get(p, "size"))) * 512;
        s.type = lower(json_string_value(json_object_get(p, "type")));
        const char* uuid = json_string_value(json_object_get(p, "uuid"));
        s.uuid = uuid ? lower(uuid) : "";
        result.push_back(s);
    }
    json_decref(root);
    return result;
}

bool loop_bound(const fs::path& device) {
    // /sys/block/loopN/loop exists exactly while the device is bound to a file.
    return fs::exists(fs::path("/sys/block") / device.filename() / "loop");
}

std::string sys_loop(const fs::path& device, const char* attribute) {
    std::ifstream in(fs::path("/sys/block") / device.filename() / "loop" / attribute);
    std::string value;
    std::getline(in, value);
    return value;
}

// GPT: 4 MiB EFI partition and a Linux partition holding LUKS2 over the rest of a 48 MiB image.
fs::path make_gpt_image(const TempDir& dir, std::string* luks_uuid = nullptr) {
    fs::path image = dir / "disk.img";
    make_sparse_file(image, 48 * kMiB);
    run_ok({"sfdisk", "-q", image.string()}, std::string("label: gpt\nsize=4MiB, type=") + kEfiType +
                                                 ", name=EFI\ntype=" + kLinuxType + ", name=root\n");
    auto parts = sfdisk_partitions(image);
    REQUIRE(parts.size() == 2);
    std::string uuid = luks_format_window(image, parts[1].start_bytes, parts[1].size_bytes);
    if (luks_uuid) *luks_uuid = uuid;
    return image;
}

}  // namespace

TEST_CASE("probe a whole-disk GPT image: partitions agree with sfdisk, the LUKS2 one is found") {
    TempDir dir;
    std::string luks_uuid;
    fs::path image = make_gpt_image(dir, &luks_uuid);
    auto expected = sfdisk_partitions(image);

    ImageProbe probe = probe_image(image);
    CHECK(probe.table == "gpt");
    CHECK_FALSE(probe.luks_version.has_value());
    CHECK(probe.size_bytes == 48 * kMiB);
    CHECK_FALSE(probe.block_device);
    REQUIRE(probe.partitions.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        CHECK(probe.partitions[i].number == static_cast<int>(i + 1));
        CHECK(probe.partitions[i].offset_bytes == expected[i].start_bytes);
        CHECK(probe.partitions[i].size_bytes == expected[i].size_bytes);
        CHECK(probe.partitions[i].type == expected[i].type);
        CHECK(probe.partitions[i].uuid == expected[i].uuid);
    }
    CHECK(probe.partitions[0].name == "EFI");
    CHECK_FALSE(probe.partitions[0].luks_version.has_value());
    CHECK(probe.partitions[1].luks_version == 2);
    CHECK(probe.partitions[1].luks_uuid == luks_uuid);

    LuksTarget target = select_luks_target(image);
    CHECK(target.partition == 2);
    CHECK(target.offset_bytes == expected[1].start_bytes);
    CHECK(target.size_bytes == expected[1].size_bytes);
    CHECK(target.describe() == image.string() + " partition 2");

    // The JSON form carries the same facts.
    json_error_t error;
    json_t* root = json_loads(probe.to_json().c_str(), 0, &error);
    REQUIRE(root != nullptr);
    CHECK(std::string(json_string_value(json_object_get(root, "table"))) == "gpt");
    json_t* second = json_array_get(json_object_get(root, "partitions"), 1);
    CHECK(json_integer_value(json_object_get(second, "luks_version")) == 2);
    CHECK(static_cast<std::uint64_t>(json_integer_value(json_object_get(second, "offset_bytes"))) ==
          expected[1].start_bytes);
    json_decref(root);

    // And the CLI prints it.
    RunResult cli = run_cli({"probe", image.string(), "--json"});
    CHECK(cli.exit_code == 0);
    CHECK(cli.out.find(luks_uuid) != std::string::npos);
    RunResult text = run_cli({"probe", image.string()});
    CHECK(text.exit_code == 0);
    CHECK(text.out.find("LUKS2 " + luks_uuid) != std::string::npos);
}

TEST_CASE("probe an MBR image, a bare LUKS2 file and a LUKS1 partition") {
    TempDir dir;
    SUBCASE("MBR with LUKS2 in the second primary partition") {
        fs::path image = dir / "mbr.img";
        make_sparse_file(image, 40 * kMiB);
        run_ok({"sfdisk", "-q", image.string()}, "label: dos\nsize=8MiB, type=83\ntype=83\n");
        auto parts = sfdisk_partitions(image);
        REQUIRE(parts.size() == 2);
        std::string uuid = luks_format_window(image, parts[1].start_bytes, parts[1].size_bytes);
        ImageProbe probe = probe_image(image);
        CHECK(probe.table == "dos");
        REQUIRE(probe.partitions.size() == 2);
        CHECK(probe.partitions[1].type == "0x83");
        CHECK(probe.partitions[1].offset_bytes == parts[1].start_bytes);
        CHECK(probe.partitions[1].luks_version == 2);
        CHECK(probe.partitions[1].luks_uuid == uuid);
        CHECK(select_luks_target(image).partition == 2);
    }
    SUBCASE("bare LUKS2 file: the image itself is the target, no loop device needed") {
        fs::path image = dir / "bare.img";
        make_sparse_file(image, 20 * kMiB);
        run_ok({"cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                "1000", "--key-file", "-", image.string()},
               "pw");
        ImageProbe probe = probe_image(image);
        CHECK(probe.luks_version == 2);
        CHECK(probe.table.empty());
        CHECK(probe.partitions.empty());
        LuksTarget target = select_luks_target(image);
        CHECK_FALSE(target.partition.has_value());
        AttachedTarget attached = AttachedTarget::attach(target);
        CHECK(attached.device() == image);
        CHECK_THROWS_AS(select_luks_target(image, 1), FormatError);
    }
    SUBCASE("LUKS1 is recognised and refused with a clear message") {
        fs::path image = dir / "luks1.img";
        make_sparse_file(image, 32 * kMiB);
        run_ok({"sfdisk", "-q", image.string()}, "label: gpt\ntype=" + std::string(kLinuxType) + "\n");
        auto parts = sfdisk_partitions(image);
        luks_format_window(image, parts[0].start_bytes, parts[0].size_bytes, "luks1");
        ImageProbe probe = probe_image(image);
        CHECK(probe.partitions.at(0).luks_version == 1);
        try {
            select_luks_target(image);
            FAIL("LUKS1 must be refused");
        } catch (const FormatError& e) {
            CHECK(std::string(e.what()).find("LUKS1") != std::string::npos);
        }
    }
    SUBCASE("no LUKS at all, and a missing file") {
        fs::path image = dir / "empty.img";
        make_sparse_file(image, 8 * kMiB);
        CHECK(probe_image(image).partitions.empty());
        CHECK_THROWS_AS(select_luks_target(image), FormatError);
        CHECK_THROWS_AS(probe_image(dir / "missing.img"), NotFoundError);
    }
}

TEST_CASE("several LUKS2 partitions require --partition") {
    TempDir dir;
    fs::path image = dir / "two.img";
    make_sparse_file(image, 64 * kMiB);
    run_ok({"sfdisk", "-q", image.string()},
           "label: gpt\nsize=24MiB, type=" + std::string(kLinuxType) + "\ntype=" + kLinuxType + "\n");
    auto parts = sfdisk_partitions(image);
    luks_format_window(image, parts[0].start_bytes, parts[0].size_bytes);
    luks_format_window(image, parts[1].start_bytes, parts[1].size_bytes);
    CHECK(luks_targets(probe_image(image)).size() == 2);
    try {
        select_luks_target(image);
        FAIL("ambiguous image must be refused");
    } catch (const FormatError& e) {
        CHECK(std::string(e.what()).find("--partition") != std::string::npos);
        CHECK(std::string(e.what()).find("1, 2") != std::string::npos);
    }
    CHECK(select_luks_target(image, 2).offset_bytes == parts[1].start_bytes);
    CHECK_THROWS_AS(select_luks_target(image, 3), NotFoundError);
}

TEST_CASE("a loop attachment maps exactly the partition, with autoclear, and detaches when destroyed") {
    TempDir dir;
    fs::path image = make_gpt_image(dir);
    LuksTarget target = select_luks_target(image);
    fs::path device;
    {
        LoopAttachment loop = LoopAttachment::attach(image, target.offset_bytes, target.size_bytes);
        device = loop.device();
        CHECK(device.string().rfind("/dev/loop", 0) == 0);
        CHECK(loop.native_handle() >= 0);
        REQUIRE(loop_bound(device));
        CHECK(sys_loop(device, "offset") == std::to_string(target.offset_bytes));
        CHECK(sys_loop(device, "sizelimit") == std::to_string(target.size_bytes));
        CHECK(sys_loop(device, "autoclear") == "1");
        CHECK(sys_loop(device, "backing_file") == fs::canonical(image).string());
        // The device shows the partition's bytes: the LUKS header.
        CHECK(read_file_bytes(device, 0, 4096) == read_file_bytes(image, target.offset_bytes, 4096));
        CHECK(read_file_bytes(device, 0, 6) == std::string("LUKS\xba\xbe", 6));
        CHECK(trim(run_ok({"blockdev", "--getsize64", device.string()})) == std::to_string(target.size_bytes));

        // Moving transfers ownership; the moved-from object detaches nothing.
        LoopAttachment moved = std::move(loop);
        CHECK(moved.device() == device);
        CHECK(loop_bound(device));
    }
    CHECK_FALSE(loop_bound(device));
    CHECK(run_ok({"losetup", "-j", image.string()}).empty());
}

TEST_CASE("kill -9 of the attaching process leaves no loop device behind") {
    TempDir dir;
    fs::path image = make_gpt_image(dir);
    LuksTarget target = select_luks_target(image);
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        try {
            LoopAttachment loop = LoopAttachment::attach(image, target.offset_bytes, target.size_bytes);
            std::string name = loop.device().string() + "\n";
            if (::write(pipe_fds[1], name.data(), name.size()) < 0) ::_exit(2);
            ::pause();  // wait to be killed with the device attached
        } catch (...) {
        }
        ::_exit(1);
    }
    ::close(pipe_fds[1]);
    std::string name;
    char c;
    while (::read(pipe_fds[0], &c, 1) == 1 && c != '\n') name += c;
    ::close(pipe_fds[0]);
    REQUIRE_FALSE(name.empty());
    CHECK(loop_bound(name));
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    // The kernel detaches on the last close (autoclear); give its release a moment.
    for (int i = 0; i < 100 && loop_bound(name); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(loop_bound(name));
    CHECK(run_ok({"losetup", "-j", image.string()}).empty());
}

TEST_CASE("concurrent attachments get distinct devices despite the loop-control race") {
    TempDir dir;
    fs::path image = dir / "plain.img";
    make_sparse_file(image, 8 * kMiB);
    constexpr int threads = 3;
    std::vector<std::optional<LoopAttachment>> loops(threads);
    std::vector<std::thread> workers;
    std::vector<std::string> errors(threads);
    for (int i = 0; i < threads; ++i)
        workers.emplace_back([&, i] {
            try {
                loops[i] = LoopAttachment::attach(image, static_cast<std::uint64_t>(i) * kMiB, kMiB, true);
            } catch (const std::exception& e) {
                errors[i] = e.what();
            }
        });
    for (auto& w : workers) w.join();
    std::set<std::string> devices;
    for (int i = 0; i < threads; ++i) {
        CHECK(errors[i].empty());
        if (loops[i]) {
            devices.insert(loops[i]->device().string());
            std::ifstream ro(fs::path("/sys/block") / loops[i]->device().filename() / "ro");
            std::string flag;
            std::getline(ro, flag);
            CHECK(flag == "1");
        }
    }
    CHECK(devices.size() == threads);
    loops.clear();
    for (const auto& d : devices) CHECK_FALSE(loop_bound(d));
}

TEST_CASE("attaching a missing file fails cleanly without using a loop device") {
    TempDir dir;
    std::string before = run_ok({"losetup", "-a"});
    CHECK_THROWS_AS(LoopAttachment::attach(dir / "missing.img"), NotFoundError);
    CHECK(run_ok({"losetup", "-a"}) == before);
}
