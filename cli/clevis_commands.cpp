// Clevis binding subcommands: bind, pass, unlock, list, unbind, regen — Clevis's habits (pin config JSON,
// `clevis luks list` output, `clevis luks pass` to stdout) with luksforge's verification and safety.
#include "commands.hpp"
#include "common.hpp"
#include "policy_commands.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <cstdio>
#include <memory>
#include <string>

namespace luksforge::cli {
namespace {

struct NetworkFlags {
    long connect_timeout_ms = 3000;
    long timeout_ms = 10000;
};

void add_network_options(CLI::App& cmd, NetworkFlags& flags) {
    cmd.add_option("--connect-timeout", flags.connect_timeout_ms, "Tang connect timeout in ms")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd.add_option("--timeout", flags.timeout_ms, "Tang total timeout per request in ms")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
}

PinOptions pin_options(const NetworkFlags& flags, bool trust_on_first_use = false) {
    PinOptions options;
    options.network.connect_timeout_ms = flags.connect_timeout_ms;
    options.network.total_timeout_ms = flags.timeout_ms;
    options.trust_on_first_use = trust_on_first_use;
    return options;
}

std::string_view verification_name(clevis::Verification v) {
    switch (v) {
    case clevis::Verification::verified: return "verified";
    case clevis::Verification::skipped: return "skipped";
    }
    return "unknown";
}

std::string bind_result_json(const clevis::BindResult& r) {
    return "{\"keyslot\":" + std::to_string(r.keyslot) + ",\"token\":" + std::to_string(r.token) +
           ",\"verified\":" + (r.verification == clevis::Verification::verified ? "true" : "false") +
           ",\"verification\":\"" + std::string(verification_name(r.verification)) +
           "\",\"message\":" + json_quote(r.message) + "}";
}

void report_bind(const clevis::BindResult& result, bool json) {
    if (json)
        print_json(bind_result_json(result));
    else
        std::printf("%s\n", result.message.c_str());
    if (result.verification != clevis::Verification::verified)
        std::fprintf(stderr, "luksforge: warning: %s\n", result.message.c_str());
}

struct BindArgs {
    std::string image, pin, config;
    std::string policy;
    SecretOption passphrase;
    bool trust_on_first_use = false;
    int slot = -1;
    int token_id = -1;
    int existing_token = -1;
    std::uint32_t iterations = 1000;
    bool no_verify = false;
    bool json = false;
    NetworkFlags network;
};

struct SlotArgs {
    std::string image;
    int slot = -1;
    bool force = false;
    bool json = false;
    bool test = false;
    std::string name;
    int key_fd = -1;
    std::string config;
    bool trust_on_first_use = false;
    bool pins_only = false;
    SecretOption passphrase;
    std::uint32_t iterations = 1000;
    NetworkFlags network;
};

std::optional<int> optional_slot(int slot) { return slot >= 0 ? std::optional<int>(slot) : std::nullopt; }

}  // namespace

void register_clevis_commands(CLI::App& app) {
    {
        auto* cmd = app.add_subcommand("bind", "Bind a LUKS2 volume to a Clevis pin (tang, sss) in a new keyslot");
        auto a = std::make_shared<BindArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("PIN", a->pin, "Clevis pin: tang or sss (required unless --policy)");
        cmd->add_option("CONFIG", a->config,
                        "Clevis pin config JSON, e.g. '{\"url\":\"http://tang:7500\",\"thp\":\"...\"}' "
                        "(\"adv\": a file name or the advertisement JSON)");
        auto* policy = cmd->add_option("--policy", a->policy,
                                       "bind the pin, servers, trust and keyslot PBKDF of a deployment policy "
                                       "(docs/policy.md) instead of PIN CONFIG")
                           ->type_name("FILE");
        add_secret_option(*cmd, a->passphrase, "passphrase",
                          "an existing passphrase of the volume (required unless -e)");
        cmd->add_flag("-y,--trust-on-first-use", a->trust_on_first_use,
                      "trust an advertisement that is neither pinned by \"thp\" nor given as \"adv\"");
        cmd->add_option("-s,--slot", a->slot, "keyslot for the binding (default: first free)")->check(CLI::Range(0, 31));
        cmd->add_option("-t,--token-id", a->token_id, "token id for the binding (default: first free)")
            ->check(CLI::Range(0, 31));
        cmd->add_option("-e,--existing-token", a->existing_token,
                        "unlock with this existing token instead of a passphrase (a clevis token, or a "
                        "luks2-keyring token whose key is in the kernel keyring)")
            ->check(CLI::Range(0, 31));
        cmd->add_option("--pbkdf-iterations", a->iterations, "pbkdf2 iterations of the new keyslot (hash: the volume's)")
            ->capture_default_str()
            ->check(CLI::Range(1000u, 100000000u));
        cmd->add_flag("--no-verify", a->no_verify, "do not prove through the server that the token opens its slot");
        cmd->add_flag("--json", a->json, "print the result as JSON");
        add_network_options(*cmd, a->network);
        policy->excludes("--trust-on-first-use")->excludes("--pbkdf-iterations");
        set_action(*cmd, [a] {
            if (!a->policy.empty() && (!a->pin.empty() || !a->config.empty()))
                throw CLI::ValidationError("--policy replaces PIN and CONFIG: give one or the other");
            if (a->policy.empty() && (a->pin.empty() || a->config.empty()))
                throw CLI::RequiredError("PIN and CONFIG (or --policy FILE)");
            if (a->passphrase.given() == (a->existing_token >= 0))
                throw CLI::ValidationError("bind", "give an existing passphrase (--passphrase-file/--passphrase-fd) or "
                                                   "-e EXISTING_TOKEN_ID, exactly one");
            if (!a->policy.empty() && (a->existing_token >= 0 || a->token_id >= 0))
                throw CLI::ValidationError("bind", "-e and -t are not available with --policy");
            SecretBuffer existing;
            if (a->passphrase.given()) existing = a->passphrase.read("existing passphrase");
            if (!a->policy.empty()) {
                report_bind(bind_under_policy(a->image, a->policy, existing, pin_options(a->network).network, a->slot,
                                              !a->no_verify),
                            a->json);
                return 0;
            }
            Volume volume = clevis::open_for_bindings(a->image, Volume::Access::read_write);
            clevis::BindOptions options;
            options.pin = pin_options(a->network, a->trust_on_first_use);
            options.keyslot = a->slot;
            options.token_id = a->token_id;
            options.pbkdf.iterations = a->iterations;
            options.verify = !a->no_verify;
            if (a->existing_token >= 0)
                existing = clevis::existing_token_passphrase(volume, a->existing_token, options.pin);
            report_bind(clevis::bind(volume, a->pin, a->config, existing.view(), options), a->json);
            return 0;
        });
    }
    {
        auto* cmd = app.add_subcommand("pass", "Print the passphrase a Clevis token recovers (like clevis luks pass)");
        auto a = std::make_shared<SlotArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("-s,--slot", a->slot, "only the token bound to this keyslot")->check(CLI::Range(0, 31));
        add_network_options(*cmd, a->network);
        set_action(*cmd, [a] {
            const Volume volume = clevis::open_for_bindings(a->image, Volume::Access::read_only);
            clevis::Unlocked unlocked = clevis::unlock(volume, optional_slot(a->slot), pin_options(a->network));
            write_secret_fd(1, unlocked.passphrase.bytes());
            return 0;
        });
    }
    {
        auto* cmd = app.add_subcommand("unlock", "Recover a Clevis token's passphrase and open (or test) the volume");
        auto a = std::make_shared<SlotArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("-s,--slot", a->slot, "only the token bound to this keyslot")->check(CLI::Range(0, 31));
        auto* test = cmd->add_flag("--test", a->test, "only check that a token opens its keyslot (exit 0 if so)");
        auto* name = cmd->add_option("-n,--name", a->name, "activate as /dev/mapper/NAME (needs device-mapper)");
        auto* fd = cmd->add_option("--key-fd", a->key_fd, "write the recovered passphrase to this file descriptor")
                       ->check(CLI::NonNegativeNumber);
        test->excludes(name);
        test->excludes(fd);
        name->excludes(fd);
        add_network_options(*cmd, a->network);
        set_action(*cmd, [a] {
            if (!a->test && a->name.empty() && a->key_fd < 0)
                throw CLI::ValidationError("unlock", "one of --test, --name NAME or --key-fd N is required");
            const auto access = a->name.empty() ? Volume::Access::read_only : Volume::Access::read_write;
            Volume volume = clevis::open_for_bindings(a->image, access);
            clevis::Unlocked unlocked = clevis::unlock(volume, optional_slot(a->slot), pin_options(a->network));
            if (a->key_fd >= 0) {
                write_secret_fd(a->key_fd, unlocked.passphrase.bytes());
            } else if (!a->name.empty()) {
                clevis::activate(volume, a->name, unlocked.passphrase, unlocked.keyslot);
                std::printf("activated /dev/mapper/%s with keyslot %d (token %d)\n", a->name.c_str(), unlocked.keyslot,
                            unlocked.token);
            } else {
                if (unlocked.token < 0)
                    std::printf("luksmeta slot %d opens keyslot %d\n", unlocked.keyslot, unlocked.keyslot);
                else
                    std::printf("token %d opens keyslot %d\n", unlocked.token, unlocked.keyslot);
            }
            return 0;
        });
    }
    {
        auto* cmd = app.add_subcommand("list", "List Clevis bindings (like clevis luks list)");
        auto a = std::make_shared<SlotArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("-s,--slot", a->slot, "only this keyslot")->check(CLI::Range(0, 31));
        cmd->add_flag("-p,--pins", a->pins_only, "print only the sorted pins each binding uses, e.g. '1: sss tang'");
        cmd->add_flag("--json", a->json, "print a JSON array");
        set_action(*cmd, [a] {
            const Volume volume = clevis::open_for_bindings(a->image, Volume::Access::read_only);
            std::string json = "[";
            for (const auto& binding : clevis::list(volume)) {
                if (a->slot >= 0 && binding.keyslot != a->slot) continue;
                if (a->json) {
                    if (json.size() > 1) json += ",";
                    std::string pins = "[";
                    for (const auto& pin : binding.pins) pins += (pins.size() > 1 ? "," : "") + json_quote(pin);
                    json += "{\"keyslot\":" + std::to_string(binding.keyslot) + ",\"token\":" +
                            std::to_string(binding.token) + ",\"pin\":" + json_quote(binding.pin) +
                            ",\"config\":" + (binding.config.empty() ? "null" : binding.config) +
                            ",\"pins\":" + pins + "]" +
                            (binding.problem.empty() ? "" : ",\"problem\":" + json_quote(binding.problem)) + "}";
                } else if (!binding.problem.empty()) {
                    // Clevis skips unreadable tokens silently; say what is wrong, on stderr.
                    std::fprintf(stderr, "luksforge: warning: %s\n", clevis::format_binding(binding).c_str());
                } else if (a->pins_only) {
                    std::string pins;
                    for (const auto& pin : binding.pins) pins += (pins.empty() ? "" : " ") + pin;
                    std::printf("%d: %s\n", binding.keyslot, pins.c_str());
                } else {
                    std::printf("%s\n", clevis::format_binding(binding).c_str());
                }
            }
            if (a->json) print_json(json + "]");
            return 0;
        });
    }
    {
        auto* cmd = app.add_subcommand("unbind", "Remove a Clevis binding: its token and its keyslot");
        auto a = std::make_shared<SlotArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("-s,--slot", a->slot, "keyslot of the binding")->required()->check(CLI::Range(0, 31));
        cmd->add_flag("-f,--force", a->force, "also remove the volume's last keyslot");
        set_action(*cmd, [a] {
            Volume volume = clevis::open_for_bindings(a->image, Volume::Access::read_write);
            clevis::unbind(volume, a->slot, a->force);
            std::printf("removed the Clevis binding of keyslot %d\n", a->slot);
            return 0;
        });
    }
    {
        auto* cmd = app.add_subcommand(
            "regen", "Regenerate a Clevis binding in place (same keyslot) with the servers' current keys");
        auto a = std::make_shared<SlotArgs>();
        cmd->add_option("IMAGE", a->image, "LUKS2 image file or device")->required();
        cmd->add_option("-s,--slot", a->slot, "keyslot of the binding to regenerate")->required()->check(
            CLI::Range(0, 31));
        cmd->add_option("--config", a->config,
                        "pin config for the new binding (default: the old one's, trusting its server as "
                        "clevis luks regen does)");
        cmd->add_flag("-y,--trust-on-first-use", a->trust_on_first_use, "with --config: trust an unpinned server");
        add_secret_option(*cmd, a->passphrase, "passphrase",
                          "an existing passphrase, used when the old binding no longer recovers (its Tang keys "
                          "are gone)");
        cmd->add_option("--pbkdf-iterations", a->iterations, "pbkdf2 iterations of the new keyslot (hash: the volume's)")
            ->capture_default_str()
            ->check(CLI::Range(1000u, 100000000u));
        cmd->add_flag("--json", a->json, "print the result as JSON");
        add_network_options(*cmd, a->network);
        set_action(*cmd, [a] {
            SecretBuffer existing;
            if (a->passphrase.given()) existing = a->passphrase.read("existing passphrase");
            Volume volume = clevis::open_for_bindings(a->image, Volume::Access::read_write);
            clevis::RegenOptions options;
            options.bind.pin = pin_options(a->network, a->trust_on_first_use);
            options.bind.pbkdf.iterations = a->iterations;
            if (!a->config.empty()) options.config_json = a->config;
            if (a->passphrase.given()) options.existing_passphrase = existing.view();
            const clevis::RegenResult result = clevis::regen(volume, a->slot, options);
            if (a->json) {
                print_json("{\"old_keyslot\":" + std::to_string(result.old_keyslot) + ",\"resumed\":" +
                           (result.resumed ? "true" : "false") + ",\"used_existing_passphrase\":" +
                           (result.used_existing_passphrase ? "true" : "false") +
                           ",\"new\":" + bind_result_json(result.bound) + "}");
            } else {
                std::printf("%s\n", result.bound.message.c_str());
            }
            return 0;
        });
    }
}

}  // namespace luksforge::cli
