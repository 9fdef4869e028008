// Deployment policy (TOML, docs/policy.md): parsing with tomlplusplus keeping every setting's line, the checks
// `luksforge policy check` reports, and what a policy means for clevis_encrypt/bind and for format.
#include <luksforge/policy.hpp>

#include "pins/tpm2_pin.hpp"
#include "policy/header_fit.hpp"
#include "util/cryptsetup_util.hpp"
#include "util/error_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/tang.hpp>

#include <libcryptsetup.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

namespace luksforge {
using detail::bare_message;
using detail::excerpt;
using detail::binary_header_bytes;
using detail::fresh_header_json;
using detail::keyslot_json;
using detail::token_entry_overhead;

namespace {

// The Clevis passphrase a binding protects: 40 random bytes as base64url.
constexpr std::size_t clevis_passphrase_bytes = 54;

std::size_t b64_length(std::size_t bytes) { return (bytes * 4 + 2) / 3; }

std::string format_size(std::uint64_t bytes) {
    if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + "MiB";
    if (bytes % (1 << 10) == 0) return std::to_string(bytes >> 10) + "KiB";
    return std::to_string(bytes) + " bytes";
}

// "64KiB", "64K", "1MiB", "16384" (binary units).
std::optional<std::uint64_t> parse_size(std::string_view text) {
    std::size_t i = 0;
    std::uint64_t value = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
        if (value > (UINT64_MAX - 9) / 10) return std::nullopt;
        value = value * 10 + static_cast<std::uint64_t>(text[i++] - '0');
    }
    if (i == 0) return std::nullopt;
    std::string unit(text.substr(i));
    for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    static const std::map<std::string, std::uint64_t> units = {
        {"", 1}, {"b", 1}, {"k", 1ull << 10}, {"kib", 1ull << 10}, {"m", 1ull << 20}, {"mib", 1ull << 20}};
    const auto unit_it = units.find(unit);
    if (unit_it == units.end()) return std::nullopt;
    return value * unit_it->second;
}

bool is_thumbprint(std::string_view thp) {
    // base64url of SHA-256 (43 characters) or SHA-1 (27), the two Clevis accepts for "thp".
    if (thp.size() != 43 && thp.size() != 27) return false;
    return std::all_of(thp.begin(), thp.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

// For duplicate detection: scheme and host are case-insensitive, a trailing '/' means nothing to Clevis.
std::string normalise_url(std::string url) {
    while (!url.empty() && url.back() == '/') url.pop_back();
    const std::size_t authority_end = url.find('/', url.find("://") == std::string::npos ? 0 : url.find("://") + 3);
    for (std::size_t i = 0; i < std::min(authority_end, url.size()); ++i)
        url[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(url[i])));
    return url;
}

bool valid_url(std::string_view url) {
    for (std::string_view scheme : {"http://", "https://"})
        if (url.substr(0, scheme.size()) == scheme) {
            const std::string_view rest = url.substr(scheme.size());
            return !rest.empty() && rest.front() != '/' &&
                   std::none_of(rest.begin(), rest.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
        }
    return false;
}

std::optional<std::string> read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

// Collects schema problems while walking the TOML tree.
struct Reader {
    Policy& policy;

    std::size_t line_of(const toml::node& node) const { return node.source().begin.line; }
    std::size_t line_of(const toml::key& key) const { return key.source().begin.line; }

    void problem(std::size_t line, std::string message) {
        policy.parse_problems.push_back({policy.source, line, std::move(message)});
    }

    std::optional<std::string> string_of(const toml::key& key, const toml::node& node, std::string_view where) {
        if (const auto* value = node.as_string()) return value->get();
        problem(line_of(node), std::string(where) + std::string(key.str()) + " must be a string");
        return std::nullopt;
    }
    std::optional<std::int64_t> integer_of(const toml::key& key, const toml::node& node, std::string_view where,
                                           std::int64_t minimum, std::int64_t maximum) {
        const auto* value = node.as_integer();
        if (value == nullptr) {
            problem(line_of(node), std::string(where) + std::string(key.str()) + " must be an integer");
            return std::nullopt;
        }
        if (value->get() < minimum || value->get() > maximum) {
            problem(line_of(node), std::string(where) + std::string(key.str()) + " = " + std::to_string(value->get()) +
                                       " is out of range (" + std::to_string(minimum) + ".." + std::to_string(maximum) + ")");
            return std::nullopt;
        }
        return value->get();
    }
    std::optional<bool> bool_of(const toml::key& key, const toml::node& node, std::string_view where) {
        if (const auto* value = node.as_boolean()) return value->get();
        problem(line_of(node), std::string(where) + std::string(key.str()) + " must be true or false");
        return std::nullopt;
    }
    std::optional<std::uint64_t> size_of(const toml::key& key, const toml::node& node, std::string_view where) {
        std::optional<std::uint64_t> bytes;
        if (const auto* integer = node.as_integer(); integer != nullptr && integer->get() > 0)
            bytes = static_cast<std::uint64_t>(integer->get());
        else if (const auto* text = node.as_string())
            bytes = parse_size(text->get());
        if (!bytes)
            problem(line_of(node), std::string(where) + std::string(key.str()) +
                                       " must be a size: bytes as an integer or a string like \"64KiB\"");
        return bytes;
    }
    void unknown(const toml::key& key, std::string_view where, std::string_view known) {
        problem(line_of(key), "unknown key " + std::string(where) + excerpt(key.str()) + " (known: " + std::string(known) + ")");
    }

    void read_root(const toml::table& root) {
        for (auto&& [key, node] : root) {
            const std::string_view name = key.str();
            if (name == "threshold") {
                policy.threshold_line = line_of(node);
                // t < 1 is reported by check() with the other threshold problems; accept any integer here.
                if (auto t = integer_of(key, node, "", INT32_MIN, INT32_MAX)) {
                    if (*t < 1) {
                        problem(line_of(node), "threshold = " + std::to_string(*t) + " must be at least 1");
                        policy.threshold = 1;
                    } else {
                        policy.threshold = static_cast<unsigned>(*t);
                    }
                }
            } else if (name == "trust_on_first_use") {
                if (auto value = bool_of(key, node, "")) policy.trust_on_first_use = *value;
            } else if (name == "max_instances_per_key") {
                if (auto value = integer_of(key, node, "", 1, 1'000'000))
                    policy.max_instances_per_key = static_cast<unsigned>(*value);
            } else if (name == "ledger") {
                if (auto text = string_of(key, node, "")) policy.ledger = *text;
            } else if (name == "tang") {
                read_servers(node);
            } else if (name == "tpm2") {
                if (const auto* table = node.as_table()) read_tpm2(*table);
                else problem(line_of(node), "tpm2 must be a table ([tpm2])");
            } else if (name == "luks") {
                if (const auto* table = node.as_table()) read_luks(*table);
                else problem(line_of(node), "luks must be a table ([luks])");
            } else if (name == "keyslot") {
                if (const auto* table = node.as_table()) read_keyslot(*table);
                else problem(line_of(node), "keyslot must be a table ([keyslot])");
            } else {
                unknown(key, "", "threshold, trust_on_first_use, max_instances_per_key, ledger, [[tang]], [tpm2], [luks], [keyslot]");
            }
        }
    }

    void read_servers(const toml::node& node) {
        policy.servers_line = line_of(node);
        const auto* array = node.as_array();
        if (array == nullptr || !array->is_array_of_tables()) {
            problem(line_of(node), "tang must be an array of tables ([[tang]] entries)");
            return;
        }
        for (const toml::node& entry : *array) {
            const toml::table& table = *entry.as_table();
            PolicyTangServer server;
            server.line = line_of(entry);
            for (auto&& [key, value] : table) {
                const std::string_view name = key.str();
                if (name == "url") {
                    server.url_line = line_of(value);
                    if (auto text = string_of(key, value, "tang.")) server.url = *text;
                } else if (name == "thp") {
                    server.thp_line = line_of(value);
                    if (auto text = string_of(key, value, "tang.")) server.thp = *text;
                } else if (name == "adv") {
                    server.adv_line = line_of(value);
                    if (auto text = string_of(key, value, "tang.")) server.adv = *text;
                } else {
                    unknown(key, "tang.", "url, thp, adv");
                }
            }
            if (server.line == 0) server.line = server.url_line;
            if (server.url_line == 0) problem(server.line, "[[tang]] entry has no url");
            policy.servers.push_back(std::move(server));
        }
    }

    // [tpm2]: Clevis's tpm2 config in TOML (pcr_ids as "0,7" or [0, 7]); validated as the pin validates it.
    void read_tpm2(const toml::table& table) {
        PolicyTpm2 tpm2;
        tpm2.line = line_of(table);
        detail::JsonPtr config = detail::json_take(json_object());
        bool sound = true;
        for (auto&& [key, node] : table) {
            const std::string_view name = key.str();
            if (name == "pcr_ids" && node.is_array()) {
                json_t* ids = json_array();
                for (const toml::node& item : *node.as_array()) {
                    if (const auto* n = item.as_integer()) json_array_append_new(ids, json_integer(n->get()));
                    else if (const auto* t = item.as_string()) json_array_append_new(ids, json_string(t->get().c_str()));
                    else sound = false, problem(line_of(item), "tpm2.pcr_ids items must be PCR numbers");
                }
                json_object_set_new(config.get(), "pcr_ids", ids);
            } else if (name == "pcr_ids" || name == "pcr_bank" || name == "hash" || name == "key") {
                if (auto text = string_of(key, node, "tpm2."))
                    json_object_set_new(config.get(), std::string(name).c_str(), json_string(text->c_str()));
                else
                    sound = false;
            } else {
                unknown(key, "tpm2.", "pcr_ids, pcr_bank, hash, key");
                sound = false;
            }
        }
        if (!sound) return;
        try {
            const detail::Tpm2Config parsed = detail::parse_tpm2_config(config.get());
            // Clevis's own form of the ids ("0,7"), so `policy pin` prints what `clevis luks bind` takes.
            if (!parsed.pcrs.empty())
                json_object_set_new(config.get(), "pcr_ids", json_string(parsed.pcrs.ids.c_str()));
        } catch (const FormatError& e) {
            problem(tpm2.line, "[tpm2]: " + bare_message(e));
            return;
        }
        tpm2.config_json = detail::json_dump(config.get(), JSON_COMPACT | JSON_SORT_KEYS);
        policy.tpm2 = std::move(tpm2);
    }

    void read_luks(const toml::table& table) {
        for (auto&& [key, node] : table) {
            const std::string_view name = key.str();
            if (name == "cipher") {
                policy.cipher_line = line_of(node);
                if (auto text = string_of(key, node, "luks.")) {
                    const std::size_t dash = text->find('-');
                    if (dash == std::string::npos || dash == 0 || dash + 1 == text->size())
                        problem(line_of(node), "luks.cipher = \"" + excerpt(*text) +
                                                   "\" must be cipher-mode, e.g. \"aes-xts-plain64\"");
                    else
                        policy.cipher = *text;
                }
            } else if (name == "key_bits") {
                policy.key_bits_line = line_of(node);
                if (auto bits = integer_of(key, node, "luks.", 128, 1024)) {
                    if (*bits % 64 != 0) problem(line_of(node), "luks.key_bits must be a multiple of 64");
                    else policy.key_bits = static_cast<unsigned>(*bits);
                }
            } else if (name == "metadata_size") {
                policy.metadata_line = line_of(node);
                if (auto bytes = size_of(key, node, "luks.")) {
                    if (std::find(std::begin(Policy::metadata_sizes), std::end(Policy::metadata_sizes), *bytes) ==
                        std::end(Policy::metadata_sizes))
                        problem(line_of(node), "luks.metadata_size = " + format_size(*bytes) +
                                                   " is not a LUKS2 metadata size (16KiB, 32KiB, ... 4MiB, powers of two)");
                    else
                        policy.metadata_bytes = *bytes;
                }
            } else if (name == "keyslots_size") {
                policy.keyslots_line = line_of(node);
                if (auto bytes = size_of(key, node, "luks.")) {
                    if (*bytes % 4096 != 0 || *bytes > (128ull << 20) || *bytes < (1ull << 20))
                        problem(line_of(node), "luks.keyslots_size = " + format_size(*bytes) +
                                                   " must be a multiple of 4KiB between 1MiB and 128MiB");
                    else
                        policy.keyslots_bytes = *bytes;
                }
            } else {
                unknown(key, "luks.", "cipher, key_bits, metadata_size, keyslots_size");
            }
        }
    }

    void read_keyslot(const toml::table& table) {
        for (auto&& [key, node] : table) {
            const std::string_view name = key.str();
            if (name == "pbkdf") {
                policy.pbkdf_line = line_of(node);
                if (auto text = string_of(key, node, "keyslot.")) {
                    try {
                        policy.keyslot_pbkdf.type = Pbkdf::parse_type(*text);
                    } catch (const FormatError&) {
                        problem(line_of(node), "keyslot.pbkdf = \"" + excerpt(*text) + "\" must be pbkdf2, argon2id or argon2i");
                    }
                }
            } else if (name == "hash") {
                if (auto text = string_of(key, node, "keyslot.")) {
                    static const std::vector<std::string> hashes = {"sha1", "sha256", "sha384", "sha512"};
                    if (std::find(hashes.begin(), hashes.end(), *text) == hashes.end())
                        problem(line_of(node), "keyslot.hash = \"" + excerpt(*text) + "\" must be sha1, sha256, sha384 or sha512");
                    else
                        policy.keyslot_pbkdf.hash = *text;
                }
            } else if (name == "iterations") {
                if (auto value = integer_of(key, node, "keyslot.", 1, UINT32_MAX))
                    policy.keyslot_pbkdf.iterations = static_cast<std::uint32_t>(*value);
                iterations_line = line_of(node);
            } else if (name == "memory_kib") {
                if (auto value = integer_of(key, node, "keyslot.", 32, 4 * 1024 * 1024))
                    policy.keyslot_pbkdf.memory_kib = static_cast<std::uint32_t>(*value);
            } else if (name == "parallel") {
                if (auto value = integer_of(key, node, "keyslot.", 1, 16))
                    policy.keyslot_pbkdf.parallel = static_cast<std::uint32_t>(*value);
            } else {
                unknown(key, "keyslot.", "pbkdf, hash, iterations, memory_kib, parallel");
            }
        }
        // libcryptsetup's minimums: pbkdf2 1000 iterations, argon2 time cost 4; 0 would mean "benchmark",
        // which a policy must not leave to the build machine's speed.
        const bool pbkdf2 = policy.keyslot_pbkdf.type == Pbkdf::Type::pbkdf2;
        const std::uint32_t minimum = pbkdf2 ? 1000 : 4;
        if (iterations_line == 0) policy.keyslot_pbkdf.iterations = minimum;
        if (policy.keyslot_pbkdf.iterations < minimum)
            problem(iterations_line ? iterations_line : policy.pbkdf_line,
                    "keyslot.iterations must be at least " + std::to_string(minimum) + " for " +
                        std::string(Pbkdf::type_name(policy.keyslot_pbkdf.type)));
        if (!pbkdf2 && policy.keyslot_pbkdf.memory_kib == 0) policy.keyslot_pbkdf.memory_kib = 32 * 1024;
        if (!pbkdf2 && policy.keyslot_pbkdf.parallel == 0) policy.keyslot_pbkdf.parallel = 1;
    }
    std::size_t iterations_line = 0;
};


// The tang pin config Clevis takes for one server: {"url":..,"thp":..,"adv":FILE}.
detail::JsonPtr tang_config(const PolicyTangServer& server) {
    detail::JsonPtr config = detail::json_take(json_object());
    json_object_set_new(config.get(), "url", json_string(server.url.c_str()));
    if (server.thp) json_object_set_new(config.get(), "thp", json_string(server.thp->c_str()));
    if (server.adv) json_object_set_new(config.get(), "adv", json_string(server.adv->c_str()));
    return config;
}

// A tang child JWE's length when its advertisement is unknown: measured for a stock Tang advertisement (one
// P-521 signing and one exchange key) as 1292 bytes plus the base64url of the URL in its header, plus 5 %.
std::size_t estimated_tang_jwe(const PolicyTangServer& server) {
    return (1292 + b64_length(server.url.size())) * 105 / 100;
}

// A tpm2 JWE's length, an upper bound without a TPM (check and format never touch one): measured with swtpm
// as 782 (sha256, no PCRs), 882 (PCR 7), 1025 (sha384, rsa) and 1249 bytes (sha512, all 24 sha512 PCRs).
std::size_t estimated_tpm2_jwe(const PolicyTpm2& tpm2) {
    detail::JsonPtr config = detail::json_parse(tpm2.config_json, "[tpm2]");
    const std::string hash = detail::json_string_or(config.get(), "hash", "sha256");
    const std::size_t base = hash == "sha512" ? 1400 : hash == "sha384" ? 1100 : 1000;
    return base + 2 * detail::json_string_or(config.get(), "pcr_ids").size();
}

// Compact JWE length → the clevis token's JSON length ({"type":"clevis","keyslots":["N"],"jwe":{...}}).
std::size_t token_json_length(std::size_t compact_length) { return compact_length + 110; }

std::string pipeline_fit_message(const Policy::PipelineFit& fit, std::size_t servers);

}  // namespace

std::string PolicyProblem::to_string() const {
    return line == 0 ? source + ": " + message : source + ":" + std::to_string(line) + ": " + message;
}

Policy Policy::load(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw NotFoundError("policy file " + path.string() + " does not exist");
    const std::optional<std::string> text = read_text_file(path);
    if (!text) throw NotFoundError("cannot read policy file " + path.string());
    std::filesystem::path base = path.parent_path();
    if (base.empty()) base = ".";
    return parse(*text, path.string(), std::filesystem::absolute(base));
}

Policy Policy::parse(std::string_view toml_text, std::string source, std::filesystem::path base_dir) {
    Policy policy;
    policy.source = std::move(source);
    toml::table root;
    try {
        root = toml::parse(toml_text, policy.source);
    } catch (const toml::parse_error& e) {
        throw PolicySyntaxError({policy.source, e.source().begin.line, "TOML syntax error: " + std::string(e.description())});
    }
    Reader reader{policy};
    reader.read_root(root);
    for (PolicyTangServer& server : policy.servers)
        if (server.adv && server.adv->is_relative()) server.adv = (base_dir / *server.adv).lexically_normal();
    std::stable_sort(policy.parse_problems.begin(), policy.parse_problems.end(),
                     [](const PolicyProblem& a, const PolicyProblem& b) { return a.line < b.line; });
    return policy;
}

std::vector<PolicyProblem> Policy::check() const {
    std::vector<PolicyProblem> problems = parse_problems;
    auto problem = [&](std::size_t line, std::string message) { problems.push_back({source, line, std::move(message)}); };

    const std::size_t n = servers.size();
    const std::size_t pins = n + (tpm2 ? 1 : 0);
    if (pins == 0) problem(0, "no Tang servers: add at least one [[tang]] entry with a url (or a [tpm2])");
    if (pins > 0 && threshold > pins)
        problem(threshold_line ? threshold_line : servers_line,
                "threshold = " + std::to_string(threshold) + " is larger than the " + std::to_string(n) +
                    " Tang server" + (n == 1 ? "" : "s") + (tpm2 ? " and the TPM2" : "") + " listed (t must be 1.." +
                    std::to_string(pins) + ")");

    std::map<std::string, std::size_t> seen_urls;
    bool adv_unusable = false;
    for (const PolicyTangServer& server : servers) {
        if (server.url_line != 0 && !valid_url(server.url))
            problem(server.url_line, "tang.url \"" + excerpt(server.url) + "\" must be an http:// or https:// URL");
        if (!server.url.empty()) {
            const auto [it, inserted] = seen_urls.emplace(normalise_url(server.url), server.url_line);
            if (!inserted)
                problem(server.url_line, "duplicate Tang url \"" + excerpt(server.url) + "\" (already listed at line " +
                                             std::to_string(it->second) + ")");
        }
        if (server.thp && !is_thumbprint(*server.thp))
            problem(server.thp_line, "tang.thp \"" + excerpt(*server.thp) +
                                         "\" is not a thumbprint (base64url SHA-256, 43 characters, or SHA-1, 27)");
        if (server.adv) {
            std::optional<std::string> text;
            std::string unreadable = "does not exist or cannot be read";
            try {
                text = tang::read_advertisement_file(*server.adv);  // regular files only, at most 1 MiB
            } catch (const Error& e) {
                if (!dynamic_cast<const NotFoundError*>(&e)) unreadable = "cannot be used: " + bare_message(e);
            }
            if (!text) {
                problem(server.adv_line, "tang.adv file " + excerpt(server.adv->string()) + " " + unreadable);
                adv_unusable = true;
            } else {
                try {
                    const tang::Advertisement adv = tang::parse_advertisement(*text);
                    if (server.thp && is_thumbprint(*server.thp) && !adv.has_signing_key(*server.thp)) {
                        problem(server.adv_line, "tang.adv " + excerpt(server.adv->string()) +
                                                     " is not signed by the pinned thp " + *server.thp);
                        adv_unusable = true;
                    }
                    if (adv.exchange_thumbprints.empty())
                        problem(server.adv_line, "tang.adv " + excerpt(server.adv->string()) + " has no exchange (deriveKey) key");
                } catch (const Error& e) {
                    problem(server.adv_line, "tang.adv " + excerpt(server.adv->string()) + ": " + bare_message(e));
                    adv_unusable = true;
                }
            }
        }
        if (!server.thp && !server.adv && !trust_on_first_use)
            problem(server.line, "Tang server \"" + excerpt(server.url) +
                                     "\" has neither thp nor adv: pin its thumbprint, supply its advertisement, "
                                     "or set trust_on_first_use = true");
    }

    // Do seal and stamp fit the metadata? Only meaningful for a policy whose servers are otherwise sound.
    if (pins > 0 && threshold >= 1 && threshold <= pins && !adv_unusable) {
        try {
            if (metadata_bytes) {
                const PipelineFit fit = pipeline_fit(*metadata_bytes);
                if (!fit.fits()) problem(metadata_line, pipeline_fit_message(fit, n));
            } else {
                const PipelineFit largest = pipeline_fit(metadata_sizes[std::size(metadata_sizes) - 1]);
                if (!largest.fits())
                    problem(servers_line, "the clevis token for " + std::to_string(n) +
                                              " Tang servers would not fit even the largest LUKS2 metadata (4MiB)");
            }
        } catch (const Error& e) {
            problem(metadata_line ? metadata_line : servers_line,
                    "cannot estimate the clevis token size: " + bare_message(e));
        }
    }

    std::stable_sort(problems.begin(), problems.end(),
                     [](const PolicyProblem& a, const PolicyProblem& b) { return a.line < b.line; });
    return problems;
}

void Policy::require_valid() const {
    const std::vector<PolicyProblem> problems = check();
    if (problems.empty()) return;
    std::string message = "policy " + source + " is not valid:";
    for (const PolicyProblem& p : problems) message += "\n  " + p.to_string();
    throw FormatError(message);
}

Policy::Pin Policy::pin() const {
    if (servers.empty() && !tpm2) throw FormatError("policy " + source + " names no Tang server");
    if (servers.size() == 1 && !tpm2 && threshold == 1) return {"tang", detail::json_dump(tang_config(servers[0]).get())};
    if (servers.empty() && threshold == 1) return {"tpm2", tpm2->config_json};
    detail::JsonPtr pins = detail::json_take(json_object());
    if (!servers.empty()) {
        json_t* tangs = json_array();
        for (const PolicyTangServer& server : servers) json_array_append_new(tangs, tang_config(server).release());
        json_object_set_new(pins.get(), "tang", tangs);
    }
    if (tpm2) json_object_set_new(pins.get(), "tpm2", detail::json_parse(tpm2->config_json, "[tpm2]").release());
    detail::JsonPtr config =
        detail::json_take(json_pack("{s:I,s:O}", "t", static_cast<json_int_t>(threshold), "pins", pins.get()));
    return {"sss", detail::json_dump(config.get())};
}

void Policy::require_no_tpm2(std::string_view command) const {
    if (!tpm2) return;
    throw FormatError(std::string(command) + ": policy " + source + " has a [tpm2] pin (line " +
                      std::to_string(tpm2->line) + "), which " + std::string(command) +
                      " would seal to this build host's TPM, not the instance's; bind tpm2 on the instance "
                      "(`luksforge bind IMAGE --policy FILE` there, or `clevis luks bind`)");
}

PinOptions Policy::pin_options(const NetworkOptions& network) const {
    PinOptions options;
    options.network = network;
    options.trust_on_first_use = trust_on_first_use;
    return options;
}

TokenEstimate Policy::estimate_token(const std::optional<NetworkOptions>& online) const {
    TokenEstimate estimate;
    const bool all_offline = !servers.empty() && std::all_of(servers.begin(), servers.end(), [](const auto& s) {
        return s.adv.has_value();
    });
    if ((all_offline || online) && !tpm2) {
        // Encrypt a throw-away passphrase: the size is exact (every length in the JWE is fixed by the
        // advertisements, the URLs and the passphrase length). Offline advertisements need no network.
        const Pin chosen = pin();
        const SecretBuffer dummy = random_secret(clevis_passphrase_bytes);
        const PinOptions options = pin_options(online ? *online : NetworkOptions{});
        const std::string jwe = clevis_encrypt(chosen.name, chosen.config_json, dummy.bytes(), options);
        estimate.token_bytes = token_json_length(jwe.size());
        estimate.measured = true;
    } else if (servers.size() == 1 && !tpm2 && threshold == 1) {
        estimate.token_bytes = token_json_length(estimated_tang_jwe(servers[0]));
    } else if (servers.empty() && tpm2 && threshold == 1) {
        estimate.token_bytes = token_json_length(estimated_tpm2_jwe(*tpm2));
    } else {
        // {"alg":"dir","enc":"A256GCM","clevis":{"pin":"sss","sss":{"t":T,"p":"<43>","jwe":["child",...]}}}
        std::size_t header = 100;
        for (const PolicyTangServer& server : servers) header += estimated_tang_jwe(server) + 3;
        if (tpm2) header += estimated_tpm2_jwe(*tpm2) + 3;
        const std::size_t compact = b64_length(header) + 2 + b64_length(12) + 1 +
                                    b64_length(clevis_passphrase_bytes) + 1 + b64_length(16);
        estimate.token_bytes = token_json_length(compact);
    }
    estimate.required_json_bytes = fresh_header_json + keyslot_json + token_entry_overhead + estimate.token_bytes;
    return estimate;
}

Policy::PipelineFit Policy::pipeline_fit(std::uint64_t metadata_bytes, const std::optional<NetworkOptions>& online) const {
    PipelineFit fit;
    fit.metadata_bytes = metadata_bytes;
    fit.token = estimate_token(online);
    fit.seal = seal_header_fit(metadata_bytes, fit.token.token_bytes);
    const bool one_pass = cipher == "aes-xts-plain64";  // stamp's default data path; else libcryptsetup re-encryption
    fit.stamp_one_pass = one_pass;
    fit.stamp = stamp_header_fit(metadata_bytes, fit.token.token_bytes, one_pass);
    if (servers.size() + (tpm2 ? 1 : 0) >= 2 || threshold > 1) {
        // sss: the token grows by about the same amount per server (each child JWE is one server's); estimate the
        // most servers of this kind that fit from this policy's own per-server share.
        const std::size_t n = servers.size() + (tpm2 ? 1 : 0);
        const std::size_t fixed = token_json_length(b64_length(100) + 2 + b64_length(12) + 1 +
                                                    b64_length(clevis_passphrase_bytes) + 1 + b64_length(16));
        const std::size_t per_server = fit.token.token_bytes > fixed ? (fit.token.token_bytes - fixed + n - 1) / n : 0;
        unsigned most = 0;
        for (unsigned k = 1; per_server > 0 && k <= 256; ++k) {
            const std::size_t token = fixed + k * per_server;
            if (!seal_header_fit(metadata_bytes, token).fits() || !stamp_header_fit(metadata_bytes, token, one_pass).fits())
                break;
            most = k;
        }
        fit.max_servers = most;
    }
    return fit;
}

namespace {
std::string pipeline_fit_message(const Policy::PipelineFit& fit, std::size_t servers) {
    const std::string how = fit.token.measured ? "" : "about ";
    std::string message = "the clevis token for " + std::to_string(servers) + " Tang server" +
                          (servers == 1 ? "" : "s") + " is " + how + std::to_string(fit.token.token_bytes) +
                          " bytes: seal needs " + how + std::to_string(fit.seal.needed) + " and stamp " + how +
                          std::to_string(fit.stamp.needed) + " bytes of LUKS2 JSON, but metadata_size = " +
                          format_size(fit.metadata_bytes) + " leaves " + std::to_string(fit.seal.available);
    if (fit.max_servers) message += "; at most " + std::to_string(*fit.max_servers) + " such servers fit";
    for (std::uint64_t size : Policy::metadata_sizes)
        if (seal_header_fit(size, fit.token.token_bytes).fits() && stamp_header_fit(size, fit.token.token_bytes, fit.stamp_one_pass).fits()) {
            message += "; or use metadata_size = \"" + format_size(size) + "\" (`luksforge format --policy`)";
            break;
        }
    return message;
}
}  // namespace

FormatOptions Policy::format_options() const {
    FormatOptions options;
    const std::size_t dash = cipher.find('-');
    options.cipher = cipher.substr(0, dash);
    options.cipher_mode = dash == std::string::npos ? std::string() : cipher.substr(dash + 1);
    options.volume_key_bytes = key_bits / 8;
    if (metadata_bytes) {
        options.metadata_bytes = *metadata_bytes;
    } else if (!servers.empty() || tpm2) {
        const TokenEstimate token = estimate_token();
        for (std::uint64_t size : metadata_sizes)
            if (seal_header_fit(size, token.token_bytes).fits() && stamp_header_fit(size, token.token_bytes, cipher == "aes-xts-plain64").fits()) {
                // 16 KiB is libcryptsetup's default: leave it implicit so the keyslots area default applies.
                options.metadata_bytes = size == metadata_sizes[0] ? 0 : size;
                break;
            }
    }
    if (keyslots_bytes) options.keyslots_bytes = *keyslots_bytes;
    return options;
}

std::optional<PolicyProblem> Policy::binding_fits(const Volume& volume,
                                                  const std::optional<NetworkOptions>& online) const {
    const detail::HeaderUse use = detail::header_use(volume);
    const std::size_t current_json = use.json_bytes;
    const std::uint64_t metadata = use.metadata_bytes;
    const TokenEstimate estimate = estimate_token(online);
    const std::size_t required = current_json + keyslot_json + token_entry_overhead + estimate.token_bytes;
    const std::size_t available = use.available();
    if (required <= available) return std::nullopt;
    const std::string how = estimate.measured ? "" : "about ";
    return PolicyProblem{volume.path().string(), 0,
                         "the clevis token for " + std::to_string(servers.size()) + " Tang server" +
                             (servers.size() == 1 ? "" : "s") + " (" + how + std::to_string(estimate.token_bytes) +
                             " bytes) and its keyslot do not fit the LUKS2 metadata: " + std::to_string(current_json) +
                             " of " + std::to_string(available) + " bytes are in use (metadata size " +
                             format_size(metadata) +
                             "); format the image with `luksforge format --policy` to reserve more, or use fewer servers"};
}

std::vector<PolicyProblem> Policy::verify_volume(const Volume& volume,
                                                 const std::optional<NetworkOptions>& online) const {
    std::vector<PolicyProblem> problems;
    const std::string where = volume.path().string();
    const Inspection inspection = volume.inspect();
    if (inspection.cipher != cipher)
        problems.push_back({where, 0, "cipher is " + inspection.cipher + ", the policy requires " + cipher});
    if (inspection.volume_key_bytes * 8 != key_bits)
        problems.push_back({where, 0, "volume key has " + std::to_string(inspection.volume_key_bytes * 8) +
                                          " bits, the policy requires " + std::to_string(key_bits)});
    if (metadata_bytes && inspection.metadata_bytes < *metadata_bytes)
        problems.push_back({where, 0, "LUKS2 metadata is " + format_size(inspection.metadata_bytes) +
                                          ", the policy requires " + format_size(*metadata_bytes)});
    for (const Token& token : inspection.tokens) {
        if (token.type != "clevis") continue;
        for (int slot : token.keyslots) {
            const auto keyslot = std::find_if(inspection.keyslots.begin(), inspection.keyslots.end(),
                                              [&](const Keyslot& k) { return k.id == slot; });
            if (keyslot == inspection.keyslots.end()) {
                problems.push_back({where, 0, "clevis token " + std::to_string(token.id) + " names missing keyslot " +
                                                  std::to_string(slot)});
                continue;
            }
            if (keyslot->pbkdf.type != keyslot_pbkdf.type || keyslot->pbkdf.iterations < keyslot_pbkdf.iterations)
                problems.push_back({where, 0, "clevis keyslot " + std::to_string(slot) + " uses " +
                                                  std::string(Pbkdf::type_name(keyslot->pbkdf.type)) + " with " +
                                                  std::to_string(keyslot->pbkdf.iterations) +
                                                  " iterations, the policy requires " +
                                                  std::string(Pbkdf::type_name(keyslot_pbkdf.type)) + " with at least " +
                                                  std::to_string(keyslot_pbkdf.iterations)});
        }
    }
    const bool bound = std::any_of(inspection.tokens.begin(), inspection.tokens.end(),
                                   [](const Token& t) { return t.type == "clevis"; });
    if (!bound)
        if (auto fit = binding_fits(volume, online)) problems.push_back(std::move(*fit));
    return problems;
}

}  // namespace luksforge
