// Internal: a small RAII layer over jansson's json_t (the JSON library libjose uses).
#pragma once

#include <luksforge/error.hpp>

#include <jansson.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

namespace luksforge::detail {

struct JsonDeleter {
    void operator()(json_t* json) const noexcept { json_decref(json); }
};
// Owns one reference.
using JsonPtr = std::unique_ptr<json_t, JsonDeleter>;

// Take ownership of a new reference (e.g. from json_object(), json_loads()).
inline JsonPtr json_take(json_t* json) noexcept { return JsonPtr(json); }
// Add a reference to a borrowed value (e.g. from json_object_get()) and own it.
inline JsonPtr json_share(json_t* json) noexcept { return JsonPtr(json_incref(json)); }

// Parse JSON text; throws FormatError naming `what` and jansson's message on bad input.
inline JsonPtr json_parse(std::string_view text, std::string_view what = "JSON") {
    json_error_t error{};
    json_t* json = json_loadb(text.data(), text.size(), JSON_REJECT_DUPLICATES, &error);
    if (json == nullptr)
        throw FormatError(std::string(what) + " is not valid JSON: " + error.text + " (line " +
                          std::to_string(error.line) + ", column " + std::to_string(error.column) + ")");
    return JsonPtr(json);
}

// Serialise; `flags` are jansson's JSON_* dump flags (default: compact, key order kept).
inline std::string json_dump(const json_t* json, std::size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER) {
    char* text = json_dumps(json, flags | JSON_ENCODE_ANY);
    if (text == nullptr) throw FormatError("cannot serialise JSON");
    std::string result(text);
    std::free(text);
    return result;
}

// Object member as a string, or `fallback` when absent or not a string.
inline std::string json_string_or(const json_t* object, const char* key, std::string_view fallback = {}) {
    const json_t* value = json_object_get(object, key);
    return json_is_string(value) ? std::string(json_string_value(value), json_string_length(value))
                                 : std::string(fallback);
}

// Object member that must be a string; throws FormatError otherwise.
inline std::string json_require_string(const json_t* object, const char* key, std::string_view what = "JSON") {
    const json_t* value = json_object_get(object, key);
    if (!json_is_string(value)) throw FormatError(std::string(what) + ": missing string \"" + key + "\"");
    return std::string(json_string_value(value), json_string_length(value));
}

}  // namespace luksforge::detail
