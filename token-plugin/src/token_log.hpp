// Messages from the handler into libcryptsetup's log (crypt_log), the only output channel a handler has:
// cryptsetup prints them, systemd-cryptsetup forwards them to the journal. Only descriptions go there —
// token numbers, pin names, URLs, error messages — never a passphrase or key; the text is cut to one line of
// printable ASCII so a hostile header or server cannot inject terminal escapes or fake lines.
//
// Nothing here allocates: a message is given as up to three parts that are joined in a fixed stack buffer, so
// the catch blocks of the ABI entry points (which run after std::bad_alloc too) can name what failed.
#pragma once

#include <array>
#include <string_view>

struct crypt_device;

namespace luksforge::token {

void log_error(crypt_device* cd, std::string_view text, std::string_view more = {},
               std::string_view rest = {}) noexcept;
void log_verbose(crypt_device* cd, std::string_view text, std::string_view more = {},
                 std::string_view rest = {}) noexcept;
void log_debug(crypt_device* cd, std::string_view text, std::string_view more = {},
               std::string_view rest = {}) noexcept;
// luksDump lines: "\t<label padded to 11>: <value><more>".
void log_dump_line(crypt_device* cd, std::string_view label, std::string_view value,
                   std::string_view more = {}) noexcept;

// "Token N (clevis): " without allocating.
class TokenPrefix {
public:
    explicit TokenPrefix(int token) noexcept;
    std::string_view view() const noexcept { return {text_.data(), size_}; }

private:
    std::array<char, 40> text_{};
    std::size_t size_ = 0;
};

}  // namespace luksforge::token
