// Token parsing, offline validation and description for the clevis token handler (clevis_token.hpp).
#include "clevis_token.hpp"

#include "util/jose_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

#include <algorithm>

namespace luksforge::token {
namespace {

using detail::JsonPtr;

bool is_base64url(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    });
}

std::string_view string_member(const json_t* object, const char* key, std::string_view what) {
    const json_t* value = json_object_get(object, key);
    if (!json_is_string(value)) throw FormatError(std::string(what) + ": missing string \"" + key + "\"");
    return {json_string_value(value), json_string_length(value)};
}

const json_t* object_member(const json_t* object, const char* key, std::string_view what) {
    const json_t* value = json_object_get(object, key);
    if (!json_is_object(value)) throw FormatError(std::string(what) + ": missing object \"" + key + "\"");
    return value;
}

std::string_view b64_member(const json_t* jwe, const char* key, bool may_be_empty) {
    const std::string_view value = string_member(jwe, key, "clevis token jwe");
    if (!may_be_empty && value.empty()) throw FormatError(std::string("clevis token jwe: empty \"") + key + "\"");
    if (!is_base64url(value)) throw FormatError(std::string("clevis token jwe: \"") + key + "\" is not base64url");
    return value;
}

void require_decoded_size(std::string_view b64, std::size_t bytes, const char* what) {
    SecretBuffer decoded;  // not secret, but base64url_decode is the library's one decoder
    try {
        decoded = base64url_decode(b64);
    } catch (const FormatError&) {
        throw FormatError(std::string("clevis token jwe: ") + what + " is not valid base64url");
    }
    if (decoded.size() != bytes)
        throw FormatError(std::string("clevis token jwe: ") + what + " must be " + std::to_string(bytes) +
                          " bytes, found " + std::to_string(decoded.size()));
}

std::vector<int> parse_keyslots(const json_t* token) {
    const json_t* keyslots = json_object_get(token, "keyslots");
    if (!json_is_array(keyslots) || json_array_size(keyslots) == 0)
        throw FormatError("clevis token: \"keyslots\" must be a non-empty array");
    std::vector<int> result;
    std::size_t index = 0;
    const json_t* slot = nullptr;
    json_array_foreach(keyslots, index, slot) {
        const std::string_view text = json_is_string(slot) ? json_string_value(slot) : "";
        if (text.empty() || text.size() > 2 || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
            throw FormatError("clevis token: keyslots must be decimal strings");
        const int number = std::stoi(std::string(text));
        if (number >= 32) throw FormatError("clevis token: keyslot " + std::string(text) + " out of range (0-31)");
        result.push_back(number);
    }
    return result;
}

// The compact JWE's parts must be what a pin can decrypt: A256GCM with a 12-byte IV and a 16-byte tag.
void check_compact_parts(const detail::CompactJwe& jwe, std::string_view where) {
    for (std::string_view part : jwe.parts)
        if (!is_base64url(part)) throw FormatError(std::string(where) + ": a JWE part is not base64url");
    if (jwe.parts[3].empty()) throw FormatError(std::string(where) + ": empty JWE ciphertext");
    require_decoded_size(jwe.parts[2], 12, "the IV");
    require_decoded_size(jwe.parts[4], 16, "the tag");
}

void validate_jwe(std::string_view compact, int depth, std::string_view where);

void validate_tang_header(const json_t* header, std::string_view where) {
    const std::string what = std::string(where) + " (tang)";
    if (string_member(header, "alg", what) != "ECDH-ES") throw FormatError(what + ": alg must be ECDH-ES");
    if (string_member(header, "kid", what).empty()) throw FormatError(what + ": empty kid");
    const json_t* epk = object_member(header, "epk", what);
    if (string_member(epk, "kty", what + " epk") != "EC") throw FormatError(what + ": epk must be an EC key");
    string_member(epk, "crv", what + " epk");
    const json_t* tang = object_member(object_member(header, "clevis", what), "tang", what);
    const std::string_view url = string_member(tang, "url", what);
    // Clevis takes a URL without a scheme as http (curl's default), so only a foreign scheme is refused.
    if (url.empty() || (url.find("://") != std::string_view::npos && url.rfind("http://", 0) != 0 &&
                        url.rfind("https://", 0) != 0))
        throw FormatError(what + ": url must be http(s) or have no scheme");
    const json_t* keys = json_object_get(object_member(tang, "adv", what), "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0)
        throw FormatError(what + ": adv has no keys");
}

void validate_sss_header(const json_t* header, int depth, std::string_view where) {
    const std::string what = std::string(where) + " (sss)";
    if (string_member(header, "alg", what) != "dir") throw FormatError(what + ": alg must be dir");
    const json_t* sss = object_member(object_member(header, "clevis", what), "sss", what);
    const json_t* threshold = json_object_get(sss, "t");
    const json_t* shares = json_object_get(sss, "jwe");
    if (!json_is_integer(threshold) || json_integer_value(threshold) < 1)
        throw FormatError(what + ": t must be a positive integer");
    if (!json_is_array(shares)) throw FormatError(what + ": missing array \"jwe\"");
    if (json_array_size(shares) > kMaxShares) throw FormatError(what + ": more than 256 shares");
    if (static_cast<std::size_t>(json_integer_value(threshold)) > json_array_size(shares))
        throw FormatError(what + ": t is larger than the number of shares");
    const std::string_view prime = string_member(sss, "p", what);
    if (prime.empty() || !is_base64url(prime)) throw FormatError(what + ": p is not base64url");
    std::size_t index = 0;
    const json_t* share = nullptr;
    json_array_foreach(shares, index, share) {
        if (!json_is_string(share)) throw FormatError(what + ": shares must be compact JWE strings");
        validate_jwe({json_string_value(share), json_string_length(share)}, depth + 1,
                     std::string(where) + " share " + std::to_string(index + 1));
    }
}

void validate_jwe(std::string_view compact, int depth, std::string_view where) {
    if (depth > kMaxPinDepth) throw FormatError(std::string(where) + ": pins nested too deeply");
    const detail::CompactJwe jwe = detail::split_compact_jwe(compact);
    check_compact_parts(jwe, where);
    JsonPtr header = detail::decode_b64_json(jwe.protected_b64(), std::string(where) + " protected header");
    if (string_member(header.get(), "enc", where) != "A256GCM")
        throw FormatError(std::string(where) + ": enc must be A256GCM");
    const json_t* clevis = object_member(header.get(), "clevis", where);
    const std::string_view pin = string_member(clevis, "pin", std::string(where) + " clevis");
    if (pin == "tang") validate_tang_header(header.get(), where);
    else if (pin == "sss") validate_sss_header(header.get(), depth, where);
    else if (pin.empty()) throw FormatError(std::string(where) + ": empty clevis pin");
    // Other pins (tpm2, null, ...) are Clevis's business: the token is well-formed, this handler passes on it.
}

JsonPtr header_of(std::string_view compact) {
    return detail::decode_b64_json(detail::split_compact_jwe(compact).protected_b64(), "JWE protected header");
}

std::string pin_of(const json_t* header) {
    return detail::json_string_or(json_object_get(header, "clevis"), "pin", "?");
}

const json_t* sss_of(const json_t* header) { return json_object_get(json_object_get(header, "clevis"), "sss"); }

void describe_into(std::string_view compact, const std::string& label,
                   std::vector<std::pair<std::string, std::string>>& lines) {
    JsonPtr header = header_of(compact);
    const std::string pin = pin_of(header.get());
    if (pin == "tang") {
        const json_t* tang = json_object_get(json_object_get(header.get(), "clevis"), "tang");
        lines.emplace_back(label, "tang " + detail::json_string_or(tang, "url", "?"));
        return;
    }
    if (pin != "sss") {
        lines.emplace_back(label, pin + " (not opened by this handler)");
        return;
    }
    const json_t* sss = sss_of(header.get());
    const json_t* shares = json_object_get(sss, "jwe");
    lines.emplace_back(label, "sss (" + std::to_string(json_integer_value(json_object_get(sss, "t"))) + " of " +
                                  std::to_string(json_array_size(shares)) + ")");
    const std::string prefix = label == "Clevis pin" ? "Share " : label + ".";
    std::size_t index = 0;
    const json_t* share = nullptr;
    json_array_foreach(shares, index, share)
        describe_into(json_string_value(share), prefix + std::to_string(index + 1), lines);
}

bool openable(std::string_view compact) {
    JsonPtr header = header_of(compact);
    const std::string pin = pin_of(header.get());
    if (pin == "tang") return true;
    if (pin != "sss") return false;
    const json_t* sss = sss_of(header.get());
    std::size_t usable = 0, index = 0;
    const json_t* share = nullptr;
    json_array_foreach(json_object_get(sss, "jwe"), index, share)
        if (openable(json_string_value(share))) ++usable;
    return usable >= static_cast<std::size_t>(json_integer_value(json_object_get(sss, "t")));
}

}  // namespace

ClevisToken parse_clevis_token(std::string_view json) {
    if (json.size() > kMaxTokenBytes) throw FormatError("clevis token: larger than 1 MiB");
    // Duplicate keys are allowed, the last one wins, as in json-c (libcryptsetup's parser): stock Clevis 19
    // imports its token as `{"type":..,"jwe":<jose jwe fmt output>}` whose JWE repeats "ciphertext".
    json_error_t error{};
    JsonPtr token = detail::json_take(json_loadb(json.data(), json.size(), 0, &error));
    if (!token) throw FormatError(std::string("clevis token is not valid JSON: ") + error.text);
    if (!json_is_object(token.get())) throw FormatError("clevis token: not a JSON object");
    if (string_member(token.get(), "type", "clevis token") != "clevis")
        throw FormatError("clevis token: type is not \"clevis\"");
    ClevisToken result;
    result.keyslots = parse_keyslots(token.get());
    const json_t* jwe = object_member(token.get(), "jwe", "clevis token");
    const json_t* encrypted_key = json_object_get(jwe, "encrypted_key");
    if (encrypted_key != nullptr && !json_is_string(encrypted_key))
        throw FormatError("clevis token jwe: \"encrypted_key\" must be a string");
    const std::string_view parts[5] = {
        b64_member(jwe, "protected", false),
        encrypted_key != nullptr ? b64_member(jwe, "encrypted_key", true) : std::string_view{},
        b64_member(jwe, "iv", false), b64_member(jwe, "ciphertext", false), b64_member(jwe, "tag", false)};
    for (std::size_t i = 0; i < 5; ++i) {
        if (i > 0) result.compact_jwe += '.';
        result.compact_jwe += parts[i];
    }
    validate_jwe(result.compact_jwe, 0, "clevis token");
    return result;
}

std::vector<std::pair<std::string, std::string>> describe_pins(std::string_view compact_jwe) {
    std::vector<std::pair<std::string, std::string>> lines;
    describe_into(compact_jwe, "Clevis pin", lines);
    return lines;
}

bool openable_pins(std::string_view compact_jwe) { return openable(compact_jwe); }

}  // namespace luksforge::token
