// Internal: checking an EC public JWK (an advertised exchange key, a recovery reply, an epk) before libjose
// uses it, so a wrong size or a point off the curve gets a precise message instead of "libjose error".
#pragma once

#include <jansson.h>

#include <optional>
#include <string>

namespace luksforge::detail {

// Why `jwk` is not a usable public key on its curve ("x has 65 bytes, P-521 needs 66", "the point (x, y) is
// not on P-521", ...), or nullopt when it is one. Only EC P-256/P-384/P-521 are considered.
std::optional<std::string> ec_public_key_problem(const json_t* jwk);

}  // namespace luksforge::detail
