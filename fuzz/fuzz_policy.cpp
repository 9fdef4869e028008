// Deployment policy files (TOML, docs/policy.md): parsing, the full check (which reads `adv` files named by
// the policy: bounded, regular files only), and what bind and format derive from a valid one. No network.
#include "fuzz_input.hpp"

#include <luksforge/policy.hpp>

using namespace luksforge;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text = fuzz::text_of(data, size);
    fuzz::refused([&] {
        // Relative adv paths resolve among the advertisement seeds, so valid policies reach estimate_token.
        const Policy policy = Policy::parse(text, "<fuzz>", LUKSFORGE_FUZZ_ADV_DIR);
        for (const PolicyProblem& p : policy.parse_problems) p.to_string();
        const std::vector<PolicyProblem> problems = policy.check();
        if (!problems.empty()) return;
        policy.pin();
        policy.pin_options();
        policy.format_options();
        policy.estimate_token();
    });
    return 0;
}
