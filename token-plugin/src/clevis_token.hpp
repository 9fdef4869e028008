// The Clevis LUKS2 token as the handler reads it:
//   {"type":"clevis","keyslots":["N"],"jwe":{"protected":..,"encrypted_key":"","iv":..,"ciphertext":..,"tag":..}}
// parsed into the compact JWE, checked without any network (validate), and described for luksDump (dump).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace luksforge::token {

// Largest token JSON the handler looks at: the LUKS2 JSON area is at most 4 MiB, and the biggest realistic
// Clevis token (sss over many Tang servers) is a few tens of KiB.
inline constexpr std::size_t kMaxTokenBytes = 1u << 20;
// sss may nest (sss of sss); Clevis itself has no limit, a token deeper than this is not plausible.
inline constexpr int kMaxPinDepth = 8;
// Matches the sss pin's own refusal (more shares than this are refused before any work).
inline constexpr std::size_t kMaxShares = 256;

struct ClevisToken {
    std::vector<int> keyslots;
    std::string compact_jwe;  // protected.encrypted_key.iv.ciphertext.tag (not secret)
};

// Parse and check a token: its shape, the JWE's fields (base64url, IV and tag sizes), the protected header of
// every nested JWE, and for tang and sss the members the pins need to decrypt. A JWE of another Clevis pin
// (tpm2, ...) is a valid token the handler cannot open (stock Clevis may still bind one while this handler is
// installed). Throws luksforge::FormatError naming the first problem; never touches the network.
ClevisToken parse_clevis_token(std::string_view json);

// The pins of a compact JWE that validate accepted, as "label: value" lines for luksDump, e.g.
//   {"Clevis pin", "sss (2 of 3)"}, {"Share 1", "tang http://tang1"}, ...
std::vector<std::pair<std::string, std::string>> describe_pins(std::string_view compact_jwe);

// Whether the handler can decrypt this JWE at all (every pin in it is tang or sss, or an sss has enough
// such children). False means open reports "not for this handler" instead of trying.
bool openable_pins(std::string_view compact_jwe);

}  // namespace luksforge::token
