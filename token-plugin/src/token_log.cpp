// crypt_log wrappers (token_log.hpp).
#include "token_log.hpp"

#include <libcryptsetup.h>

#include <charconv>
#include <cstddef>
#include <initializer_list>

namespace luksforge::token {
namespace {

constexpr std::size_t kMaxLine = 480;
using Line = std::array<char, kMaxLine + 2>;

// Copy the parts into `out` as printable ASCII (anything else becomes '?'), cut to kMaxLine, then '\n' and NUL.
// No allocation: this runs in error paths, including after std::bad_alloc.
void sanitise(std::initializer_list<std::string_view> parts, Line& out) noexcept {
    std::size_t n = 0;
    for (std::string_view text : parts)
        for (char c : text) {
            if (n == kMaxLine) break;
            out[n++] = (c >= 0x20 && c < 0x7f) || c == '\t' ? c : '?';
        }
    out[n++] = '\n';
    out[n] = '\0';
}

void emit(crypt_device* cd, int level, std::string_view text, std::string_view more,
          std::string_view rest) noexcept {
    Line line{};
    sanitise({text, more, rest}, line);
    crypt_log(cd, level, line.data());
}

}  // namespace

TokenPrefix::TokenPrefix(int token) noexcept {
    constexpr std::string_view head = "Token ";
    constexpr std::string_view tail = " (clevis): ";
    char* p = text_.data();
    char* const end = text_.data() + text_.size();
    for (char c : head) *p++ = c;
    p = std::to_chars(p, end - tail.size(), token).ptr;  // an int has at most 11 characters: always fits
    for (char c : tail) *p++ = c;
    size_ = static_cast<std::size_t>(p - text_.data());
}

void log_error(crypt_device* cd, std::string_view text, std::string_view more, std::string_view rest) noexcept {
    emit(cd, CRYPT_LOG_ERROR, text, more, rest);
}
void log_verbose(crypt_device* cd, std::string_view text, std::string_view more, std::string_view rest) noexcept {
    emit(cd, CRYPT_LOG_VERBOSE, text, more, rest);
}
void log_debug(crypt_device* cd, std::string_view text, std::string_view more, std::string_view rest) noexcept {
    emit(cd, CRYPT_LOG_DEBUG, text, more, rest);
}

void log_dump_line(crypt_device* cd, std::string_view label, std::string_view value, std::string_view more) noexcept {
    // cryptsetup's own token lines look like "\tKeyslot:    1" (label and colon padded to 12 columns).
    Line line{};
    std::size_t n = 0;
    line[n++] = '\t';
    for (char c : label)
        if (n < 40) line[n++] = c;
    line[n++] = ':';
    do line[n++] = ' ';
    while (n < 13);
    Line rest{};
    sanitise({value, more}, rest);
    for (std::size_t i = 0; rest[i] != '\0' && n < kMaxLine + 1; ++i) line[n++] = rest[i];
    if (line[n - 1] != '\n') line[n++] = '\n';
    line[n] = '\0';
    // Verbose, not normal: Clevis's own scripts find "the token of keyslot N" in plain `cryptsetup luksDump`
    // output as the line right before "Keyslot: N" (grep -B1); lines between them would break stock
    // `clevis luks unlock/pass/unbind/regen` wherever this handler is installed. `luksDump -v` shows them.
    crypt_log(cd, CRYPT_LOG_VERBOSE, line.data());
}

}  // namespace luksforge::token
