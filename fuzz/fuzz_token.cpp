// LUKS2 token JSON as `cryptsetup token import` can put into a header: the clevis token's layout, then the
// JWE it holds as `luksforge list` and `unlock` read it (without contacting any server).
#include "fuzz_input.hpp"

#include <luksforge/clevis.hpp>

using namespace luksforge;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view token = fuzz::text_of(data, size);
    std::string compact;
    if (fuzz::refused([&] { compact = clevis::token_to_compact(token); })) return 0;
    fuzz::refused([&] {
        const auto [pin, config] = clevis::describe_jwe(compact);
        // What list prints must be JSON again (stock tools and scripts parse it).
        if (!config.empty() && config.front() != '{') fuzz::broken("describe_jwe config is not a JSON object");
    });
    // token_json(keyslot, compact) must give back the same compact JWE.
    fuzz::refused([&] {
        if (clevis::token_to_compact(clevis::token_json(1, compact)) != compact)
            fuzz::broken("token_json/token_to_compact do not round-trip");
    });
    return 0;
}
