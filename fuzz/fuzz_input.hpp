// Shared by the fuzz targets: the input as text, and the one rule every target follows — hostile input may
// make luksforge throw its own errors (luksforge::Error), nothing else. Any other exception, a sanitizer
// report, a leak, an abort or a hang is a finding.
#pragma once

#include <luksforge/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

namespace luksforge::fuzz {

inline std::string_view text_of(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Input split at the first NUL byte into two documents (the second empty when there is none).
inline std::pair<std::string_view, std::string_view> split_at_nul(std::string_view input) {
    const std::size_t nul = input.find('\0');
    if (nul == std::string_view::npos) return {input, {}};
    return {input.substr(0, nul), input.substr(nul + 1)};
}

// Run `step`; luksforge's own errors are the expected way to refuse hostile input.
template <typename F>
bool refused(F&& step) {
    try {
        step();
        return false;
    } catch (const luksforge::Error&) {
        return true;
    }
}

// An invariant the code under test promised and broke: abort so libFuzzer records the input.
[[noreturn]] inline void broken(const char* what) {
    std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
    std::abort();
}

}  // namespace luksforge::fuzz
