// Internal: libjose helpers shared by the tang client and the tang pin — a jose_cfg_t that remembers the
// library's last error message, thumbprints, base64url of JSON, and compact JWE splitting.
#pragma once

#include "util/json_util.hpp"

#include <luksforge/error.hpp>

// libjose's headers carry no extern "C" guards.
extern "C" {
#include <jose/jose.h>
}

#include <array>
#include <memory>
#include <string>
#include <string_view>

namespace luksforge::detail {

// One libjose configuration context whose error callback records the last message (libjose otherwise prints
// to stderr). The callback never throws.
class JoseContext {
public:
    JoseContext();
    JoseContext(JoseContext&&) noexcept = default;
    JoseContext& operator=(JoseContext&&) noexcept = default;
    ~JoseContext() noexcept = default;

    jose_cfg_t* native_handle() const noexcept { return cfg_.get(); }
    // libjose's last error message, or `fallback` when it gave none.
    std::string last_error(std::string_view fallback) const;

private:
    struct CfgDeleter {
        void operator()(jose_cfg_t* cfg) const noexcept { jose_cfg_decref(cfg); }
    };
    struct State {
        std::string message;
    };
    static void on_error(void* misc, const char* file, int line, uint64_t err, const char* fmt, va_list ap) noexcept;
    std::unique_ptr<State> state_ = std::make_unique<State>();
    std::unique_ptr<jose_cfg_t, CfgDeleter> cfg_;
};

// RFC 7638 thumbprint of `jwk` with hash `alg` ("S256", "S1", ...); empty when libjose cannot compute it.
std::string jose_thumbprint(const json_t* jwk, const char* alg = "S256");

// Whether the S256 or S1 thumbprint of `jwk` equals `thp` (Clevis accepts either for pinned keys and kids).
bool thumbprint_matches(const json_t* jwk, std::string_view thp);

// The five dot-separated parts of a compact JWE (protected, encrypted_key, iv, ciphertext, tag).
struct CompactJwe {
    std::array<std::string_view, 5> parts;
    std::string_view protected_b64() const { return parts[0]; }
};
// Throws FormatError when `jwe` does not have exactly five parts.
CompactJwe split_compact_jwe(std::string_view jwe);
// Decode a base64url JSON object (a JWE protected header); throws FormatError.
JsonPtr decode_b64_json(std::string_view b64, std::string_view what);

}  // namespace luksforge::detail
