#include "luks/reencrypt_teardown.hpp"

#include <luksforge/error.hpp>

#include "util/json_util.hpp"
#include "util/unique_fd.hpp"

#include <openssl/evp.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace luksforge::detail {
namespace {

// The LUKS2 binary header (4096 bytes in front of each JSON copy); big-endian integers.
constexpr std::size_t kBinaryBytes = 4096;
constexpr std::size_t kSeqidAt = 16, kChecksumAlgAt = 72, kChecksumAlgBytes = 32, kHdrOffsetAt = 256;
constexpr std::size_t kChecksumAt = 448, kChecksumBytes = 64;
constexpr char kPrimaryMagic[] = {'L', 'U', 'K', 'S', '\xba', '\xbe'};
constexpr char kSecondaryMagic[] = {'S', 'K', 'U', 'L', '\xba', '\xbe'};

[[noreturn]] void fail_errno(const std::string& what) { throw Error(errno, what + ": " + std::strerror(errno)); }

std::uint64_t get_be64(const std::string& bytes, std::size_t at) {
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < 8; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
    return value;
}

void put_be64(std::string& bytes, std::size_t at, std::uint64_t value) {
    for (std::size_t i = 0; i < 8; ++i) bytes[at + 7 - i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

std::string pread_exact(int fd, std::uint64_t offset, std::size_t length, const std::string& what) {
    std::string data(length, '\0');
    std::size_t done = 0;
    while (done < length) {
        const ssize_t n = ::pread(fd, data.data() + done, length - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail_errno("cannot read " + what);
        if (n == 0) throw FormatError(what + " ends inside its LUKS2 header");
        done += static_cast<std::size_t>(n);
    }
    return data;
}

void pwrite_exact(int fd, std::uint64_t offset, const std::string& data, const std::string& what) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail_errno("cannot write " + what);
        done += static_cast<std::size_t>(n);
    }
}

// The header's own checksum: over the binary header (checksum field zeroed) and the JSON area.
std::string header_checksum(std::string copy) {
    std::string algorithm(copy.data() + kChecksumAlgAt, kChecksumAlgBytes);
    algorithm.resize(std::strlen(algorithm.c_str()));
    const EVP_MD* md = EVP_get_digestbyname(algorithm.c_str());
    if (md == nullptr) throw FormatError("LUKS2 header checksum \"" + algorithm + "\" is not supported");
    std::fill(copy.begin() + kChecksumAt, copy.begin() + kChecksumAt + kChecksumBytes, '\0');
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int size = 0;
    if (EVP_Digest(copy.data(), copy.size(), digest.data(), &size, md, nullptr) != 1 || size > kChecksumBytes)
        throw FormatError("cannot compute the LUKS2 header checksum");
    std::string out(kChecksumBytes, '\0');
    std::memcpy(out.data(), digest.data(), size);
    return out;
}

// One copy (binary header + JSON area) at `offset`, if its magic and checksum are right.
std::optional<std::string> read_copy(int fd, std::uint64_t offset, const char* magic, const std::string& what) {
    std::string binary;
    try {
        binary = pread_exact(fd, offset, kBinaryBytes, what);
    } catch (const FormatError&) {
        return std::nullopt;
    }
    if (std::memcmp(binary.data(), magic, 6) != 0 || binary[6] != 0 || binary[7] != 2) return std::nullopt;
    const std::uint64_t hdr_size = get_be64(binary, 8);
    if (hdr_size <= kBinaryBytes || hdr_size > (4u << 20) || get_be64(binary, kHdrOffsetAt) != offset) return std::nullopt;
    std::string copy = binary + pread_exact(fd, offset + kBinaryBytes, hdr_size - kBinaryBytes, what);
    if (header_checksum(copy) != copy.substr(kChecksumAt, kChecksumBytes)) return std::nullopt;
    return copy;
}

std::set<std::string> strings_of(const json_t* array) {
    std::set<std::string> out;
    std::size_t i = 0;
    json_t* item = nullptr;
    json_array_foreach(array, i, item) {
        if (json_is_string(item)) out.insert(json_string_value(item));
    }
    return out;
}

bool has_flag(const json_t* segment, const char* flag) { return strings_of(json_object_get(segment, "flags")).count(flag) != 0; }

// Remove every string in `values` from the array `array` (in place).
void remove_strings(json_t* array, const std::set<std::string>& values) {
    for (std::size_t i = json_array_size(array); i-- > 0;) {
        const json_t* item = json_array_get(array, i);
        if (json_is_string(item) && values.count(json_string_value(item)) != 0) json_array_remove(array, i);
    }
}

// The digest ids bound to `segment`.
std::set<std::string> digests_of_segment(const json_t* header, const std::string& segment) {
    std::set<std::string> out;
    const char* id = nullptr;
    json_t* digest = nullptr;
    json_object_foreach(json_object_get(header, "digests"), id, digest) {
        if (strings_of(json_object_get(digest, "segments")).count(segment) != 0) out.insert(id);
    }
    return out;
}

std::optional<std::string> segment_with_flag(const json_t* header, const char* flag) {
    const char* id = nullptr;
    json_t* segment = nullptr;
    json_object_foreach(json_object_get(header, "segments"), id, segment) {
        if (has_flag(segment, flag)) return std::string(id);
    }
    return std::nullopt;
}

bool reencrypt_requirement(const std::string& name) { return name.rfind("online-reencrypt", 0) == 0; }

}  // namespace

bool reencryption_data_complete(const json_t* header) {
    const json_t* mandatory = json_object_get(json_object_get(json_object_get(header, "config"), "requirements"), "mandatory");
    const std::set<std::string> requirements = strings_of(mandatory);
    if (std::none_of(requirements.begin(), requirements.end(), reencrypt_requirement)) return false;
    const std::optional<std::string> final_segment = segment_with_flag(header, "backup-final");
    const std::optional<std::string> previous_segment = segment_with_flag(header, "backup-previous");
    if (!final_segment || !previous_segment || segment_with_flag(header, "backup-moved-segment")) return false;
    const std::set<std::string> new_digest = digests_of_segment(header, *final_segment);
    const std::set<std::string> old_digest = digests_of_segment(header, *previous_segment);
    if (new_digest.size() != 1 || old_digest.size() != 1 || new_digest == old_digest) return false;
    const json_t* final_json = json_object_get(json_object_get(header, "segments"), final_segment->c_str());
    std::size_t data_segments = 0;
    const char* id = nullptr;
    json_t* segment = nullptr;
    json_object_foreach(json_object_get(const_cast<json_t*>(header), "segments"), id, segment) {
        if (json_array_size(json_object_get(segment, "flags")) != 0) {
            if (has_flag(segment, "in-reencryption")) return false;
            continue;
        }
        ++data_segments;
        if (digests_of_segment(header, id) != new_digest) return false;
        // The data segment is the final layout: same offset and encryption as "backup-final".
        for (const char* field : {"offset", "encryption", "sector_size"})
            if (!json_equal(json_object_get(segment, field), json_object_get(final_json, field))) return false;
    }
    return data_segments == 1;
}

void finish_reencryption_teardown(const std::filesystem::path& device) {
    const std::string what = device.string();
    UniqueFd fd(::open(device.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.fd < 0) fail_errno("cannot open " + what);

    // The newest intact copy (libcryptsetup's own choice).
    std::optional<std::string> primary = read_copy(fd.fd, 0, kPrimaryMagic, what);
    std::optional<std::string> secondary;
    for (std::uint64_t offset = 16384; offset <= (4u << 20) && !secondary; offset *= 2)
        secondary = read_copy(fd.fd, offset, kSecondaryMagic, what);
    if (!primary && !secondary) throw FormatError(what + ": no intact LUKS2 header copy");
    const std::string& newest =
        !secondary || (primary && get_be64(*primary, kSeqidAt) >= get_be64(*secondary, kSeqidAt)) ? *primary : *secondary;
    const std::uint64_t hdr_size = get_be64(newest, 8);
    const std::uint64_t seqid =
        std::max(primary ? get_be64(*primary, kSeqidAt) : 0, secondary ? get_be64(*secondary, kSeqidAt) : 0) + 1;
    std::string text = newest.substr(kBinaryBytes);
    text.resize(std::strlen(text.c_str()));
    JsonPtr header = json_parse(text, "LUKS2 header of " + what);
    if (!reencryption_data_complete(header.get()))
        throw FormatError(what + ": not a re-encryption whose data is all on the new key; refusing to finish it");

    json_t* keyslots = json_object_get(header.get(), "keyslots");
    json_t* segments = json_object_get(header.get(), "segments");
    json_t* digests = json_object_get(header.get(), "digests");
    const std::string old_digest = *digests_of_segment(header.get(), *segment_with_flag(header.get(), "backup-previous")).begin();

    // What the last commit removes: the keyslots of the old key and the re-encryption keyslot, their
    // digests, the backup segments.
    std::set<std::string> gone_keyslots = strings_of(json_object_get(json_object_get(digests, old_digest.c_str()), "keyslots"));
    const char* id = nullptr;
    json_t* value = nullptr;
    json_object_foreach(keyslots, id, value) {
        if (detail::json_string_or(value, "type") == "reencrypt") gone_keyslots.insert(id);
    }
    std::set<std::string> gone_segments;
    json_object_foreach(segments, id, value) {
        if (json_array_size(json_object_get(value, "flags")) != 0) gone_segments.insert(id);
    }

    // Old-key keyslot areas hold the old volume key (wrapped): wipe them before the header forgets them.
    // (Interrupted here, the header still names them; a rerun wipes again and commits.)
    for (const std::string& slot : gone_keyslots) {
        const json_t* keyslot = json_object_get(keyslots, slot.c_str());
        if (detail::json_string_or(keyslot, "type") != "luks2") continue;
        const json_t* area = json_object_get(keyslot, "area");
        const std::uint64_t offset = std::stoull(detail::json_string_or(area, "offset", "0"));
        const std::uint64_t size = std::stoull(detail::json_string_or(area, "size", "0"));
        if (offset < 2 * hdr_size || size == 0 || size > (64u << 20)) throw FormatError(what + ": odd keyslot area");
        pwrite_exact(fd.fd, offset, std::string(static_cast<std::size_t>(size), '\0'), what);
    }
    if (::fsync(fd.fd) != 0) fail_errno("cannot sync " + what);

    for (const std::string& slot : gone_keyslots) json_object_del(keyslots, slot.c_str());
    for (const std::string& segment : gone_segments) json_object_del(segments, segment.c_str());
    std::vector<std::string> gone_digests;
    json_object_foreach(digests, id, value) {
        remove_strings(json_object_get(value, "keyslots"), gone_keyslots);
        remove_strings(json_object_get(value, "segments"), gone_segments);
        if (json_array_size(json_object_get(value, "keyslots")) == 0 && json_array_size(json_object_get(value, "segments")) == 0)
            gone_digests.emplace_back(id);
    }
    for (const std::string& digest : gone_digests) json_object_del(digests, digest.c_str());
    json_object_foreach(json_object_get(header.get(), "tokens"), id, value) {
        remove_strings(json_object_get(value, "keyslots"), gone_keyslots);
    }
    json_t* config = json_object_get(header.get(), "config");
    json_t* requirements = json_object_get(config, "requirements");
    json_t* mandatory = json_object_get(requirements, "mandatory");
    for (std::size_t i = json_array_size(mandatory); i-- > 0;) {
        const json_t* item = json_array_get(mandatory, i);
        if (json_is_string(item) && reencrypt_requirement(json_string_value(item))) json_array_remove(mandatory, i);
    }
    if (json_array_size(mandatory) == 0) json_object_del(requirements, "mandatory");
    if (json_object_size(requirements) == 0) json_object_del(config, "requirements");

    const std::string json_text = json_dump(header.get(), JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (json_text.size() >= hdr_size - kBinaryBytes) throw FormatError(what + ": finished header does not fit");

    // Both copies, each one write + fsync, primary first: whichever is intact after a crash is loaded.
    for (const bool first : {true, false}) {
        const std::optional<std::string>& own = first ? primary : secondary;
        const std::uint64_t offset = first ? 0 : hdr_size;
        std::string copy(newest.substr(0, kBinaryBytes));
        std::memcpy(copy.data(), first ? kPrimaryMagic : kSecondaryMagic, 6);
        // Each copy keeps its own salt when it had one (libcryptsetup gives every copy a distinct salt).
        if (own && get_be64(*own, 8) == hdr_size) std::memcpy(copy.data() + 104, own->data() + 104, 64);
        else if (!first && primary) {
            // Salt for a rebuilt secondary copy: derived from the primary's, but different.
            for (std::size_t i = 104; i < 168; ++i) copy[i] = static_cast<char>(copy[i] ^ 0x5a);
        }
        put_be64(copy, kSeqidAt, seqid);
        put_be64(copy, kHdrOffsetAt, offset);
        copy += json_text;
        copy.resize(static_cast<std::size_t>(hdr_size), '\0');
        const std::string checksum = header_checksum(copy);
        std::memcpy(copy.data() + kChecksumAt, checksum.data(), kChecksumBytes);
        pwrite_exact(fd.fd, offset, copy, what);
        if (::fsync(fd.fd) != 0) fail_errno("cannot sync " + what);
    }
}

}  // namespace luksforge::detail
