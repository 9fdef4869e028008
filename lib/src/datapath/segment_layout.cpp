#include "datapath/segment_layout.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include "util/cryptsetup_util.hpp"
#include "util/json_util.hpp"

#include <libcryptsetup.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

namespace luksforge::datapath {

namespace {

// The primary LUKS2 JSON area of `device` (libcryptsetup 2.6 has no call that returns it).
detail::JsonPtr read_header_json(const std::filesystem::path& device) {
    const int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(errno, "cannot open " + device.string() + ": " + std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    unsigned char binary[4096];
    if (::pread(fd, binary, sizeof binary, 0) != static_cast<ssize_t>(sizeof binary) ||
        std::memcmp(binary, "LUKS\xba\xbe\x00\x02", 8) != 0)
        throw FormatError(device.string() + " has no LUKS2 primary header");
    std::uint64_t hdr_size = 0;
    for (int i = 8; i < 16; ++i) hdr_size = (hdr_size << 8) | binary[i];
    if (hdr_size <= 4096 || hdr_size > (4u << 20)) throw FormatError(device.string() + ": bad LUKS2 header size");
    std::string text(hdr_size - 4096, '\0');
    if (::pread(fd, text.data(), text.size(), 4096) != static_cast<ssize_t>(text.size()))
        throw FormatError(device.string() + ": short LUKS2 header");
    text.resize(std::strlen(text.c_str()));
    return detail::json_parse(text, "LUKS2 header of " + device.string());
}

}  // namespace

std::variant<SegmentLayout, std::string> read_segment_layout(const Volume& volume) {
    const Inspection info = volume.inspect();
    if (info.reencryption_in_progress) return std::string("a re-encryption is in progress");
    SegmentLayout layout;
    {
        auto guard = detail::cryptsetup_guard();
        crypt_device* cd = volume.native_handle();
        const char* cipher = crypt_get_cipher(cd);
        const char* mode = crypt_get_cipher_mode(cd);
        layout.cipher.cipher = cipher != nullptr ? cipher : "";
        layout.cipher.mode = mode != nullptr ? mode : "";
        crypt_params_integrity integrity{};
        if (crypt_get_integrity_info(cd, &integrity) == 0 && integrity.integrity != nullptr &&
            *integrity.integrity != '\0')
            return std::string("integrity protection (") + integrity.integrity + ")";
        std::uint32_t flags = 0;
        if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_REQUIREMENTS, &flags) == 0 && flags != 0)
            return std::string("the header carries LUKS2 requirements flags");
        if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_ACTIVATION, &flags) == 0) layout.activation_flags = flags;
        detail::clear_crypt_error();
    }
    layout.cipher.key_bytes = info.volume_key_bytes;
    layout.cipher.sector_size = info.sector_size;
    if (auto reason = unsupported_reason(layout.cipher)) return *reason;
    layout.data_offset = info.data_offset_bytes;
    layout.metadata_bytes = info.metadata_bytes;
    layout.keyslots_bytes = info.keyslots_bytes;
    layout.uuid = info.uuid;
    layout.label = info.label;
    layout.subsystem = info.subsystem;

    detail::JsonPtr header = read_header_json(volume.path());
    const json_t* segments = json_object_get(header.get(), "segments");
    if (json_object_size(segments) != 1) return std::string("the header has more than one segment");
    const char* key = nullptr;
    json_t* segment = nullptr;
    json_object_foreach(const_cast<json_t*>(segments), key, segment) {
        if (detail::json_string_or(segment, "type") != "crypt") return std::string("the data segment is not of type crypt");
        if (detail::json_string_or(segment, "size") != "dynamic")
            return std::string("the data segment has a fixed size (a fresh header's is dynamic)");
        if (std::to_string(layout.data_offset) != detail::json_string_or(segment, "offset"))
            return std::string("the data segment offset disagrees with libcryptsetup");
        if (json_array_size(json_object_get(segment, "flags")) != 0) return std::string("the data segment has flags");
        const std::string tweak = detail::json_string_or(segment, "iv_tweak", "0");
        if (tweak.empty() || tweak.find_first_not_of("0123456789") != std::string::npos)
            return std::string("the data segment has an unreadable iv_tweak");
        layout.iv_tweak = std::stoull(tweak);
    }
    if (layout.data_offset == 0 || layout.data_offset % 512 != 0)
        return std::string("a detached header or an unaligned data offset");
    if (layout.data_offset < 2 * layout.metadata_bytes + layout.keyslots_bytes)
        return std::string("the keyslots area overlaps the data offset");
    return layout;
}

}  // namespace luksforge::datapath
