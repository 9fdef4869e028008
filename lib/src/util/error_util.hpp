// Internal: quoting one error inside another.
#pragma once

#include <exception>
#include <string>
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

}  // namespace luksforge::detail
