// Internal: quoting one error inside another.
#pragma once

#include <exception>
#include <string>
#include <string_view>
#include <system_error>

namespace luksforge::detail {

// An exception's own words, for wrapping into another error's message. luksforge::Error::what() is already
// just the message; other std::system_errors append ": <strerror>", which would repeat once quoted.
inline std::string bare_message(const std::exception& e) {
    std::string text = e.what();
    if (const auto* system = dynamic_cast<const std::system_error*>(&e)) {
        const std::string suffix = ": " + system->code().message();
        if (text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0)
            text.resize(text.size() - suffix.size());
    }
    return text;
}

// Untrusted input quoted in a message: at most `max` bytes, control characters as '?', and the full length
// when cut ("http://aaaa... (3145728 bytes)"), so an error never echoes unbounded input.
inline std::string excerpt(std::string_view text, std::size_t max = 160) {
    std::string out(text.substr(0, max));
    for (char& c : out)
        if (static_cast<unsigned char>(c) < ' ' || c == 0x7f) c = '?';
    if (text.size() > max) out += "... (" + std::to_string(text.size()) + " bytes)";
    return out;
}

}  // namespace luksforge::detail
