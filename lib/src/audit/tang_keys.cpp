// Scanning for Tang private keys (tang_keys.hpp): raw bytes of plaintext regions, host key directories, and
// the keys a binding's JWE trusts.
#include "audit/tang_keys.hpp"

#include "pins/pins.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"
#include "util/unique_fd.hpp"

#include <luksforge/error.hpp>
#include <luksforge/tang.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

namespace luksforge::detail {
namespace {

constexpr std::size_t chunk_bytes = 4 << 20;
// A JWK is at most a few KiB (RSA-4096 with CRT members ~3.3 KiB): chunks overlap by this much so none is cut.
constexpr std::size_t max_jwk_bytes = 16 << 10;

// A JSON object starting at `text` that is a JWK with a private "d" member; its bytes parsed, trailing ignored.
std::optional<PrivateJwk> private_jwk_at(const char* text, std::size_t size) {
    json_error_t error{};
    JsonPtr jwk = json_take(json_loadb(text, std::min(size, max_jwk_bytes), JSON_DISABLE_EOF_CHECK, &error));
    if (!json_is_object(jwk.get())) return std::nullopt;
    if (!json_is_string(json_object_get(jwk.get(), "kty")) || !json_is_string(json_object_get(jwk.get(), "d")))
        return std::nullopt;
    PrivateJwk found;
    found.kty = json_string_or(jwk.get(), "kty");
    found.alg = json_string_or(jwk.get(), "alg");
    found.thumbprint = jose_thumbprint(jwk.get(), "S256");
    // Wipe the private scalar before jansson frees it: the audit reports keys, it never keeps them.
    if (json_t* d = json_object_get(jwk.get(), "d"))
        explicit_bzero(const_cast<char*>(json_string_value(d)), json_string_length(d));
    if (found.thumbprint.empty()) return std::nullopt;
    return found;
}

// Every private JWK whose object starts in buffer[0, limit) (the rest of the buffer is the overlap the next chunk
// starts with); `base` is the buffer's file offset.
void scan_buffer(const char* buffer, std::size_t size, std::size_t limit, std::uint64_t base,
                 std::set<std::uint64_t>& seen, std::vector<PrivateJwk>& out) {
    static constexpr std::string_view needle = "\"kty\"";
    std::size_t pos = 0;
    while (pos < size) {
        const void* hit = ::memmem(buffer + pos, size - pos, needle.data(), needle.size());
        if (hit == nullptr) break;
        const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(hit) - buffer);
        pos = at + needle.size();
        // "kty" is a top-level member of the JWK: its object starts at one of the nearest '{' before it.
        std::size_t start = at;
        for (int tries = 0; tries < 4 && start > 0 && at - start < max_jwk_bytes; ++tries) {
            const void* brace = ::memrchr(buffer, '{', start);
            if (brace == nullptr) break;
            start = static_cast<std::size_t>(static_cast<const char*>(brace) - buffer);
            if (start >= limit) continue;  // the next chunk begins here and finds it
            if (auto jwk = private_jwk_at(buffer + start, size - start)) {
                jwk->offset = base + start;
                if (seen.insert(jwk->offset).second) out.push_back(std::move(*jwk));
                break;
            }
        }
    }
}

}  // namespace

std::vector<PrivateJwk> scan_private_jwks(const std::filesystem::path& file, std::uint64_t offset, std::uint64_t size) {
    UniqueFd fd{::open(file.c_str(), O_RDONLY | O_CLOEXEC)};
    if (fd.fd < 0) throw Error(errno, "cannot open " + file.string());
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0) throw Error(errno, "cannot stat " + file.string());
    std::uint64_t end = offset + size;
    if (size == 0) {
        end = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size)
                                  : static_cast<std::uint64_t>(::lseek(fd.fd, 0, SEEK_END));
    }
    std::vector<char> buffer(chunk_bytes + max_jwk_bytes);
    std::set<std::uint64_t> seen;
    std::vector<PrivateJwk> found;
    std::uint64_t pos = offset;
    while (pos < end) {
        // Skip the holes of sparse images (all zeros: nothing to find).
        if (S_ISREG(st.st_mode)) {
            const off_t data = ::lseek(fd.fd, static_cast<off_t>(pos), SEEK_DATA);
            if (data < 0) break;  // ENXIO: only a hole is left
            if (static_cast<std::uint64_t>(data) > pos) pos = static_cast<std::uint64_t>(data);
            if (pos >= end) break;
        }
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), end - pos));
        std::size_t got = 0;
        while (got < want) {
            const ssize_t n = ::pread(fd.fd, buffer.data() + got, want - got, static_cast<off_t>(pos + got));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw Error(errno, "cannot read " + file.string());
            if (n == 0) break;
            got += static_cast<std::size_t>(n);
        }
        if (got == 0) break;
        // Keys starting in the overlap are found again (and deduplicated) by the next chunk.
        const bool last = pos + got >= end || got < want;
        const std::size_t limit = last ? got : std::min(got, chunk_bytes);
        scan_buffer(buffer.data(), got, limit, pos, seen, found);
        if (last) break;
        pos += limit;
    }
    return found;
}

std::vector<FoundTangKey> host_tang_keys(const std::filesystem::path& dir) {
    std::vector<FoundTangKey> keys;
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) return keys;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        if (entry.path().extension() == ".jwk" && entry.is_regular_file(ec)) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
        std::vector<PrivateJwk> found;
        try {
            found = scan_private_jwks(file, 0, 0);
        } catch (const Error&) {
            continue;  // unreadable key files are not ours to judge
        }
        for (PrivateJwk& jwk : found) {
            FoundTangKey key;
            key.location = file.string();
            key.kty = std::move(jwk.kty);
            key.alg = std::move(jwk.alg);
            key.thumbprint = std::move(jwk.thumbprint);
            keys.push_back(std::move(key));
        }
    }
    return keys;
}

namespace {

void collect_trusted(std::string_view jwe, int depth, std::vector<TrustedTangKey>& out) {
    const CompactJwe compact = split_compact_jwe(jwe);
    JsonPtr header = decode_b64_json(compact.protected_b64(), "JWE protected header");
    const std::string pin = json_string_or(json_object_get(header.get(), "clevis"), "pin");
    if (pin == "sss" && depth < 8) {
        for (const std::string& child : parse_sss_jwe(jwe, header.get()).child_jwes) {
            try {
                collect_trusted(child, depth + 1, out);
            } catch (const Error&) {
                // An undecodable child trusts nothing we could check.
            }
        }
        return;
    }
    if (pin != "tang") return;
    const json_t* tang = json_object_get(json_object_get(header.get(), "clevis"), "tang");
    const std::string url = json_string_or(tang, "url");
    const std::string kid = json_string_or(header.get(), "kid");
    if (!kid.empty()) out.push_back({url, "exchange", kid});
    if (const json_t* adv = json_object_get(tang, "adv"); json_is_object(adv)) {
        try {
            const tang::Advertisement parsed = tang::parse_advertisement(json_dump(adv));
            for (const std::string& thp : parsed.signing_thumbprints) out.push_back({url, "signing", thp});
            // The kid may be an S1 thumbprint: the exchange key's S256 one is what a key scan computes.
            for (const std::string& thp : parsed.exchange_thumbprints)
                if (thp != kid) out.push_back({url, "exchange", thp});
        } catch (const Error&) {
        }
    }
}

}  // namespace

std::vector<TrustedTangKey> trusted_tang_keys(std::string_view compact_jwe) {
    std::vector<TrustedTangKey> keys;
    try {
        collect_trusted(compact_jwe, 0, keys);
    } catch (const Error&) {
    }
    return keys;
}

}  // namespace luksforge::detail
