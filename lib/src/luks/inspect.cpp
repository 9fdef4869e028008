// Volume inspection: the volume-key fingerprint, the Inspection of a header and its JSON form
// (`luksforge inspect --json`).
#include "luks/volume_internal.hpp"

#include "util/digest.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace luksforge {

using detail::cryptsetup_guard;
using detail::device_size_bytes;
using detail::JsonPtr;
using detail::read_luks2_json;
using detail::sha256_hex;

namespace {

bool json_array_has_string(const json_t* array, std::string_view value) {
    std::size_t i = 0;
    json_t* item = nullptr;
    json_array_foreach(array, i, item) {
        if (json_is_string(item) && value == json_string_value(item)) return true;
    }
    return false;
}

bool is_backup_segment(const json_t* segment) {
    std::size_t i = 0;
    json_t* flag = nullptr;
    json_array_foreach(json_object_get(segment, "flags"), i, flag) {
        if (json_is_string(flag) && std::string_view(json_string_value(flag)).starts_with("backup-")) return true;
    }
    return false;
}

// SHA-256 over a canonical (sorted-key, compact) JSON array of public digest objects (their type, hash,
// iterations, salt and digest only).
std::string fingerprint_of_digests(const std::vector<const json_t*>& digests) {
    JsonPtr canonical = detail::json_take(json_array());
    for (const json_t* digest : digests) {
        JsonPtr object = detail::json_take(json_object());
        for (const char* field : {"type", "hash", "iterations", "salt", "digest"}) {
            if (json_t* v = json_object_get(digest, field)) json_object_set(object.get(), field, v);
        }
        json_array_append(canonical.get(), object.get());
    }
    return sha256_hex(detail::json_dump(canonical.get(), JSON_COMPACT | JSON_SORT_KEYS));
}

// The fingerprint of a LUKS2 header: over the public digest objects bound to the data segments in use. The
// digest's salt and value are public header data, but equal only for the same key.
std::string fingerprint_of(const json_t* header) {
    const json_t* segments = json_object_get(header, "segments");
    const json_t* digests = json_object_get(header, "digests");
    std::vector<std::string> data_segments;
    const char* key = nullptr;
    json_t* value = nullptr;
    json_object_foreach(const_cast<json_t*>(segments), key, value) {
        // Re-encryption keeps "backup-*" segments that describe old/new state; they are not data segments. A
        // hotzone flagged "in-reencryption" is one (interrupted mid-write it may be the only data segment).
        if (is_backup_segment(value)) continue;
        data_segments.emplace_back(key);
    }
    std::vector<std::pair<int, const json_t*>> bound;
    json_object_foreach(const_cast<json_t*>(digests), key, value) {
        const json_t* digest_segments = json_object_get(value, "segments");
        for (const auto& segment : data_segments) {
            if (json_array_has_string(digest_segments, segment)) {
                bound.emplace_back(std::atoi(key), value);
                break;
            }
        }
    }
    if (bound.empty()) throw FormatError("LUKS2 header has no digest bound to a data segment");
    std::sort(bound.begin(), bound.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<const json_t*> ordered;
    for (const auto& [id, digest] : bound) ordered.push_back(digest);
    return fingerprint_of_digests(ordered);
}

// A NUL-padded text field of the primary LUKS2 binary header: label (48 bytes at 24) or subsystem (48 at 208).
// Read here, not through crypt_get_label()/crypt_get_subsystem(): those appeared in libcryptsetup 2.5, and
// luksforge keeps to the 2.4 API (README.md; the minimum_versions test checks the symbol versions it binds).
// inspect() already needs a readable primary header (fingerprint() parses its JSON area).
std::string binary_header_text(const std::string& binary, std::size_t offset) {
    constexpr std::size_t field_bytes = 48;
    if (binary.size() < offset + field_bytes) return {};
    const char* field = binary.data() + offset;
    return std::string(field, strnlen(field, field_bytes));
}

}  // namespace

std::string Volume::fingerprint() const {
    auto guard = cryptsetup_guard();
    if (luks_version() == 1) {
        // LUKS1: the header's one master-key digest, as the LUKS2 digest object `cryptsetup convert` makes of it,
        // so a volume keeps its fingerprint across the conversion.
        JsonPtr digest = detail::read_luks1_digest(impl_->path);
        return fingerprint_of_digests({digest.get()});
    }
    JsonPtr header = read_luks2_json(impl_->path);
    return fingerprint_of(header.get());
}

Inspection Volume::inspect() const {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    Inspection out;
    out.path = impl_->path.string();
    const auto str = [](const char* s) { return s != nullptr ? std::string(s) : std::string(); };
    out.uuid = str(crypt_get_uuid(cd));
    if (luks_version() == 2) {  // LUKS1 headers have neither (cipher-name and cipher-mode sit there)
        const std::string binary = detail::read_bytes(impl_->path, 0, 4096);
        out.label = binary_header_text(binary, 24);
        out.subsystem = binary_header_text(binary, 208);
    }
    out.cipher = str(crypt_get_cipher(cd));
    if (const char* mode = crypt_get_cipher_mode(cd); mode != nullptr && *mode != '\0') out.cipher += "-" + str(mode);
    out.volume_key_bytes = static_cast<std::size_t>(std::max(0, crypt_get_volume_key_size(cd)));
    out.sector_size = static_cast<std::uint32_t>(std::max(0, crypt_get_sector_size(cd)));
    out.data_offset_bytes = crypt_get_data_offset(cd) * 512;
    std::uint64_t metadata = 0, keyslots_area = 0;
    if (crypt_get_metadata_size(cd, &metadata, &keyslots_area) == 0) {
        out.metadata_bytes = metadata;
        out.keyslots_bytes = keyslots_area;
    }
    out.device_bytes = device_size_bytes(impl_->path);
    out.reencryption_in_progress = crypt_reencrypt_status(cd, nullptr) != CRYPT_REENCRYPT_NONE;
    detail::clear_crypt_error();
    out.keyslots = keyslots();
    out.tokens = tokens();
    out.fingerprint = fingerprint();
    return out;
}

std::string Inspection::to_json() const {
    using detail::json_take;
    JsonPtr root = json_take(json_object());
    const auto set = [](json_t* object, const char* key, json_t* value) { json_object_set_new(object, key, value); };
    set(root.get(), "path", json_string(path.c_str()));
    set(root.get(), "uuid", json_string(uuid.c_str()));
    set(root.get(), "label", json_string(label.c_str()));
    set(root.get(), "subsystem", json_string(subsystem.c_str()));
    set(root.get(), "cipher", json_string(cipher.c_str()));
    set(root.get(), "volume_key_bits", json_integer(static_cast<json_int_t>(volume_key_bytes * 8)));
    set(root.get(), "sector_size", json_integer(sector_size));
    set(root.get(), "data_offset", json_integer(static_cast<json_int_t>(data_offset_bytes)));
    set(root.get(), "metadata_size", json_integer(static_cast<json_int_t>(metadata_bytes)));
    set(root.get(), "keyslots_size", json_integer(static_cast<json_int_t>(keyslots_bytes)));
    set(root.get(), "device_size", json_integer(static_cast<json_int_t>(device_bytes)));
    set(root.get(), "reencryption_in_progress", json_boolean(reencryption_in_progress));
    json_t* slots = json_array();
    set(root.get(), "keyslots", slots);
    for (const auto& slot : keyslots) {
        json_t* object = json_object();
        set(object, "id", json_integer(slot.id));
        set(object, "bound", json_boolean(slot.bound_to_segment));
        set(object, "key_bits", json_integer(static_cast<json_int_t>(slot.key_bytes * 8)));
        set(object, "priority", json_string(slot.priority.c_str()));
        json_t* pbkdf = json_object();
        set(pbkdf, "type", json_string(std::string(Pbkdf::type_name(slot.pbkdf.type)).c_str()));
        if (slot.pbkdf.type == Pbkdf::Type::pbkdf2) {
            set(pbkdf, "hash", json_string(slot.pbkdf.hash.c_str()));
            set(pbkdf, "iterations", json_integer(slot.pbkdf.iterations));
        } else {
            set(pbkdf, "time", json_integer(slot.pbkdf.iterations));
            set(pbkdf, "memory", json_integer(slot.pbkdf.memory_kib));
            set(pbkdf, "parallel", json_integer(slot.pbkdf.parallel));
        }
        set(object, "pbkdf", pbkdf);
        json_array_append_new(slots, object);
    }
    json_t* token_array = json_array();
    set(root.get(), "tokens", token_array);
    for (const auto& token : tokens) {
        json_t* object = json_object();
        set(object, "id", json_integer(token.id));
        set(object, "type", json_string(token.type.c_str()));
        json_t* ids = json_array();
        for (int slot : token.keyslots) json_array_append_new(ids, json_integer(slot));
        set(object, "keyslots", ids);
        json_array_append_new(token_array, object);
    }
    set(root.get(), "fingerprint", json_string(fingerprint.c_str()));
    return detail::json_dump(root.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

}  // namespace luksforge
