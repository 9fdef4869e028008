// `luksforge policy ...`: check a deployment policy file (docs/policy.md) and show what it binds.
#include "policy_commands.hpp"

#include "commands.hpp"
#include "common.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/policy.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace luksforge::cli {
namespace {

struct CheckOptions {
    std::string file;
    std::string metadata_size;  // empty: the policy's luks.metadata_size, else the 16 KiB default
    bool json = false;
};

std::string fit_word(const HeaderFit& fit) { return fit.fits() ? "fits" : "does not fit"; }

std::string fit_json(const HeaderFit& fit) {
    return "{\"fits\":" + std::string(fit.fits() ? "true" : "false") + ",\"needed_bytes\":" + std::to_string(fit.needed) +
           ",\"available_bytes\":" + std::to_string(fit.available) + "}";
}

int run_check(const CheckOptions& options) {
    std::vector<PolicyProblem> problems;
    std::optional<Policy> policy;
    try {
        policy = Policy::load(options.file);
        if (!options.metadata_size.empty()) {
            // Checked as if the policy said so: a size seal or stamp does not fit is a problem on that line.
            const std::uint64_t size = parse_size(options.metadata_size);
            if (std::find(std::begin(Policy::metadata_sizes), std::end(Policy::metadata_sizes), size) ==
                std::end(Policy::metadata_sizes))
                throw CLI::ValidationError("--metadata-size", options.metadata_size +
                                 " is not a LUKS2 metadata size (16K, 32K, ... 4M, powers of two)");
            policy->metadata_bytes = size;
        }
        problems = policy->check();
    } catch (const PolicySyntaxError& e) {
        problems.push_back(e.problem);
    }

    std::optional<Policy::Pin> pin;
    std::optional<TokenEstimate> estimate;
    std::uint64_t metadata_bytes = 0;
    std::optional<Policy::PipelineFit> fit;  // at the size checked: given, the policy's, else the 16 KiB default
    if (problems.empty()) {
        pin = policy->pin();
        estimate = policy->estimate_token();
        metadata_bytes = policy->format_options().metadata_bytes;
        if (metadata_bytes == 0) metadata_bytes = Policy::metadata_sizes[0];
        fit = policy->pipeline_fit(policy->metadata_bytes.value_or(Policy::metadata_sizes[0]));
    }

    if (options.json) {
        std::string out = "{\"file\":" + json_quote(options.file) + ",\"valid\":" + (problems.empty() ? "true" : "false") +
                          ",\"problems\":[";
        for (std::size_t i = 0; i < problems.size(); ++i) {
            if (i) out += ",";
            out += "{\"line\":" + std::to_string(problems[i].line) + ",\"message\":" + json_quote(problems[i].message) +
                   ",\"text\":" + json_quote(problems[i].to_string()) + "}";
        }
        out += "]";
        if (problems.empty()) {
            out += ",\"pin\":" + json_quote(pin->name) + ",\"config\":" + pin->config_json +
                   ",\"threshold\":" + std::to_string(policy->threshold) +
                   ",\"servers\":" + std::to_string(policy->servers.size()) +
                   ",\"trust_on_first_use\":" + (policy->trust_on_first_use ? "true" : "false") +
                   ",\"max_instances_per_key\":" + std::to_string(policy->max_instances_per_key) +
                   ",\"cipher\":" + json_quote(policy->cipher) + ",\"key_bits\":" + std::to_string(policy->key_bits) +
                   ",\"token_bytes\":" + std::to_string(estimate->token_bytes) +
                   ",\"token_size_measured\":" + (estimate->measured ? "true" : "false") +
                   ",\"metadata_bytes\":" + std::to_string(metadata_bytes) +
                   ",\"fit\":{\"metadata_bytes\":" + std::to_string(fit->metadata_bytes) +
                   ",\"seal\":" + fit_json(fit->seal) + ",\"stamp\":" + fit_json(fit->stamp) + ",\"max_servers\":" +
                   (fit->max_servers ? std::to_string(*fit->max_servers) : std::string("null")) + "}";
        }
        out += "}";
        print_json(out);
    } else if (problems.empty()) {
        std::printf("%s: valid: %s, %u of %zu Tang server%s, clevis token %s%zu bytes, LUKS2 metadata %llu KiB\n",
                    options.file.c_str(), pin->name.c_str(), policy->threshold, policy->servers.size(),
                    policy->servers.size() == 1 ? "" : "s", estimate->measured ? "" : "~", estimate->token_bytes,
                    static_cast<unsigned long long>(metadata_bytes >> 10));
        // seal: of an image %post already bound with stock Clevis (the largest case); stamp: of a sealed base.
        const std::string how = estimate->measured ? "" : "~";
        std::printf("%s: with %llu KiB of LUKS2 metadata seal %s (%s%zu of %zu bytes of JSON), stamp %s (%s%zu of %zu)%s\n",
                    options.file.c_str(), static_cast<unsigned long long>(fit->metadata_bytes >> 10),
                    fit_word(fit->seal).c_str(), how.c_str(), fit->seal.needed, fit->seal.available,
                    fit_word(fit->stamp).c_str(), how.c_str(), fit->stamp.needed, fit->stamp.available,
                    fit->max_servers ? (", at most " + std::to_string(*fit->max_servers) + " such Tang servers fit").c_str() : "");
    } else {
        // The report on stdout, one problem a line; and, like every failing command, one error line on stderr
        // (here carrying the same problems, so either stream alone tells the whole story).
        std::string joined;
        for (const PolicyProblem& problem : problems) {
            std::printf("%s\n", problem.to_string().c_str());
            joined += (joined.empty() ? "" : "; ") + problem.to_string();
        }
        std::fflush(stdout);
        std::fprintf(stderr, "luksforge: error: %s is not a valid policy (%zu problem%s): %s\n", options.file.c_str(),
                     problems.size(), problems.size() == 1 ? "" : "s", joined.c_str());
    }
    return problems.empty() ? exit_ok : exit_format;
}

struct PinOptionsCli {
    std::string file;
};

}  // namespace

clevis::BindResult bind_under_policy(const std::string& image, const std::string& policy_file,
                                     const SecretBuffer& existing_passphrase, const NetworkOptions& network,
                                     int slot, bool verify) {
    const Policy policy = Policy::load(policy_file);
    policy.require_valid();
    Volume volume = Volume::open(image, Volume::Access::read_write);
    // Everything is measured before the first write: a refused bind leaves the header byte for byte as it was.
    // The token is measured exactly: the servers' advertisements are fetched (as the bind itself will).
    std::vector<PolicyProblem> problems = policy.verify_volume(volume, network);
    const std::vector<Token> tokens = volume.tokens();
    const bool bound = std::any_of(tokens.begin(), tokens.end(), [](const Token& t) { return t.type == "clevis"; });
    if (bound)  // verify_volume checks the room for a binding only on unbound volumes
        if (auto fit = policy.binding_fits(volume, network)) problems.push_back(std::move(*fit));
    if (!problems.empty()) {
        std::string message = "refusing to bind " + image + " under policy " + policy_file + ": ";
        for (std::size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i].message;
        throw FormatError(message);
    }
    clevis::BindOptions options;
    options.pin = policy.pin_options(network);
    options.keyslot = slot;
    options.pbkdf = policy.keyslot_pbkdf;
    options.verify = verify;
    const Policy::Pin pin = policy.pin();
    return clevis::bind(volume, pin.name, pin.config_json, existing_passphrase.view(), options);
}

void register_policy_commands(CLI::App& app) {
    auto* policy = app.add_subcommand("policy", "Deployment policy files (docs/policy.md)");
    policy->require_subcommand(1);

    auto* check = policy->add_subcommand(
        "check", "Check a policy file; print every problem as FILE:LINE: message (exit 0 when valid)");
    auto check_options = std::make_shared<CheckOptions>();
    check->add_option("FILE", check_options->file, "Policy file (TOML)")->required();
    check->add_option("--metadata-size", check_options->metadata_size,
                       "Check that seal and stamp fit LUKS2 metadata of this size (e.g. 16K: anaconda's and "
                       "cryptsetup luksFormat's default); default: the policy's luks.metadata_size, else 16K")
        ->check(size_validator());
    check->add_flag("--json", check_options->json, "Print the result as JSON on stdout");
    set_action(*check, [check_options] { return run_check(*check_options); });

    auto* pin = policy->add_subcommand("pin", "Print the Clevis pin and config the policy binds (for clevis luks bind)");
    auto pin_options = std::make_shared<PinOptionsCli>();
    pin->add_option("FILE", pin_options->file, "Policy file (TOML)")->required();
    set_action(*pin, [pin_options] {
        const Policy policy = Policy::load(pin_options->file);
        policy.require_valid();
        const Policy::Pin chosen = policy.pin();
        std::printf("%s %s\n", chosen.name.c_str(), chosen.config_json.c_str());
        return exit_ok;
    });
}

}  // namespace luksforge::cli
