// audit: find LUKS volumes in images, devices and directories, group them by volume-key fingerprint, and flag
// keys shared by more images than allowed.
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>

#include "audit/tang_keys.hpp"
#include "util/json_util.hpp"

#include <luksforge/clevis.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <tuple>

namespace luksforge {
namespace {

using detail::JsonPtr;
using detail::json_take;

std::string absolute_string(const std::filesystem::path& path) {
    std::error_code ec;
    auto absolute = std::filesystem::absolute(path, ec);
    return (ec ? path : absolute.lexically_normal()).string();
}

// One Clevis binding and the Tang keys it trusts, matched against the private keys found once every path is read.
struct BindingTrust {
    std::string image, volume;
    int keyslot = -1;
    std::vector<detail::TrustedTangKey> keys;
};

struct Scan {
    const AuditOptions& options;
    AuditReport& report;
    std::vector<BindingTrust> bindings;
};

// Plaintext regions — partitions without LUKS, or the whole image when it is neither LUKS nor partitioned —
// scanned for private JWKs.
void scan_plaintext(const std::filesystem::path& path, const ImageProbe& probe, Scan& scan) {
    struct Region {
        std::optional<int> partition;
        std::uint64_t offset = 0, size = 0;
    };
    std::vector<Region> regions;
    if (!probe.luks_version && probe.table.empty()) regions.push_back({std::nullopt, 0, probe.size_bytes});
    for (const Partition& p : probe.partitions)
        if (!p.luks_version) regions.push_back({p.number, p.offset_bytes, p.size_bytes});
    for (const Region& region : regions) {
        if (region.size == 0) continue;
        const std::string where = region.partition ? path.string() + " partition " + std::to_string(*region.partition)
                                                   : path.string();
        try {
            for (detail::PrivateJwk& jwk : detail::scan_private_jwks(path, region.offset, region.size)) {
                FoundTangKey key;
                key.image = absolute_string(path);
                key.partition = region.partition;
                key.offset = jwk.offset;
                key.location = where + ", byte " + std::to_string(jwk.offset);
                key.kty = std::move(jwk.kty);
                key.alg = std::move(jwk.alg);
                key.thumbprint = std::move(jwk.thumbprint);
                scan.report.tang_keys_in_images.push_back(std::move(key));
            }
        } catch (const Error& e) {
            scan.report.skipped.emplace_back(where, std::string("Tang key scan: ") + e.what());
        }
    }
}

// The volume's Clevis bindings (LUKS2 tokens, LUKS1 luksmeta slots) into `audited`, and, when scanning for Tang
// keys, the keys each trusts.
void record_bindings(const std::filesystem::path& path, const LuksTarget& target, const Volume& volume,
                     AuditedVolume& audited, Scan& scan) {
    std::vector<clevis::Binding> bindings;
    try {
        bindings = clevis::list(volume);
    } catch (const Error& e) {
        // No readable tokens or luksmeta header: nothing trusted to compare.
        audited.clevis.push_back({-1, "", "", std::string("Clevis bindings unreadable: ") + e.what()});
        return;
    }
    for (const clevis::Binding& binding : bindings)
        audited.clevis.push_back({binding.keyslot, binding.pin, binding.config, binding.problem});
    if (!scan.options.scan_tang_keys) return;
    for (const clevis::Binding& binding : bindings) {
        if (binding.jwe.empty()) continue;
        BindingTrust trust{absolute_string(path), target.describe(), binding.keyslot,
                           detail::trusted_tang_keys(binding.jwe)};
        if (!trust.keys.empty()) scan.bindings.push_back(std::move(trust));
    }
}

// Every binding whose trusted key was found in an image or in a host key directory.
void match_exposures(Scan& scan) {
    std::vector<FoundTangKey> host;
    for (const auto& dir : scan.options.tang_key_dirs) {
        std::vector<FoundTangKey> keys = detail::host_tang_keys(dir);
        host.insert(host.end(), keys.begin(), keys.end());
    }
    auto check = [&](const BindingTrust& binding, const FoundTangKey& key) {
        for (const detail::TrustedTangKey& trusted : binding.keys) {
            if (trusted.thumbprint != key.thumbprint) continue;
            TangKeyExposure exposure;
            exposure.volume = binding.volume;
            exposure.keyslot = binding.keyslot;
            exposure.url = trusted.url;
            exposure.role = trusted.role;
            exposure.thumbprint = trusted.thumbprint;
            exposure.key_location = key.location;
            exposure.same_image = !key.image.empty() && key.image == binding.image;
            scan.report.tang_key_exposures.push_back(std::move(exposure));
            return;
        }
    };
    for (const BindingTrust& binding : scan.bindings) {
        for (const FoundTangKey& key : scan.report.tang_keys_in_images) check(binding, key);
        for (const FoundTangKey& key : host) check(binding, key);
    }
}

void audit_image(const std::filesystem::path& path, Scan& scan) {
    AuditReport& report = scan.report;
    ImageProbe probe;
    try {
        probe = probe_image(path);
    } catch (const Error& e) {
        report.skipped.emplace_back(path.string(), e.what());
        return;
    }
    std::vector<LuksTarget> targets;
    std::vector<int> versions;
    if (probe.luks_version) {
        targets.push_back({path, std::nullopt, 0, 0});
        versions.push_back(*probe.luks_version);
    }
    for (const Partition& p : probe.partitions) {
        if (!p.luks_version) continue;
        targets.push_back({path, p.number, p.offset_bytes, p.size_bytes});
        versions.push_back(*p.luks_version);
    }
    if (scan.options.scan_tang_keys) scan_plaintext(path, probe, scan);
    if (targets.empty()) {
        report.skipped.emplace_back(path.string(), "no LUKS volume");
        return;
    }
    for (std::size_t i = 0; i < targets.size(); ++i) {
        try {
            AttachedTarget attached = AttachedTarget::attach(targets[i], true);
            std::optional<Volume> volume = Volume::probe(attached.device());
            if (!volume) {
                report.skipped.emplace_back(targets[i].describe(), "LUKS header not readable");
                continue;
            }
            AuditedVolume audited;
            audited.image = absolute_string(path);
            audited.partition = targets[i].partition;
            audited.luks_version = versions[i];
            audited.fingerprint = volume->fingerprint();
            audited.uuid = volume->inspect().uuid;
            record_bindings(path, targets[i], *volume, audited, scan);
            report.volumes.push_back(std::move(audited));
        } catch (const Error& e) {
            report.skipped.emplace_back(targets[i].describe(), e.what());
        }
    }
}

void audit_path(const std::filesystem::path& path, bool recursive, bool top, Scan& scan) {
    AuditReport& report = scan.report;
    std::error_code ec;
    auto status = std::filesystem::status(path, ec);
    if (ec) {
        report.skipped.emplace_back(path.string(), ec.message());
        return;
    }
    if (std::filesystem::is_directory(status)) {
        if (!top && !recursive) return;
        std::vector<std::filesystem::path> entries;
        for (const auto& entry : std::filesystem::directory_iterator(path, ec)) entries.push_back(entry.path());
        if (ec) report.skipped.emplace_back(path.string(), ec.message());
        std::sort(entries.begin(), entries.end());
        for (const auto& entry : entries) {
            // Hidden files include stamp's unfinished instances.
            if (entry.filename().string().starts_with(".")) continue;
            audit_path(entry, recursive, false, scan);
        }
        return;
    }
    if (std::filesystem::is_regular_file(status) || std::filesystem::is_block_file(status)) {
        audit_image(path, scan);
        return;
    }
    if (top) report.skipped.emplace_back(path.string(), "neither a file, a block device nor a directory");
}

json_t* volume_json(const AuditedVolume& v) {
    json_t* o = json_object();
    json_object_set_new(o, "image", json_string(v.image.c_str()));
    json_object_set_new(o, "partition", v.partition ? json_integer(*v.partition) : json_null());
    json_object_set_new(o, "luks_version", json_integer(v.luks_version));
    json_object_set_new(o, "uuid", json_string(v.uuid.c_str()));
    json_object_set_new(o, "fingerprint", json_string(v.fingerprint.c_str()));
    json_t* bindings = json_array();
    for (const AuditedBinding& b : v.clevis) {
        json_t* binding = json_object();
        json_object_set_new(binding, "keyslot", b.keyslot >= 0 ? json_integer(b.keyslot) : json_null());
        json_object_set_new(binding, "pin", json_string(b.pin.c_str()));
        json_object_set_new(binding, "config", json_string(b.config.c_str()));
        if (!b.problem.empty()) json_object_set_new(binding, "problem", json_string(b.problem.c_str()));
        json_array_append_new(bindings, binding);
    }
    json_object_set_new(o, "clevis", bindings);
    return o;
}

std::string describe(const AuditedVolume& v) {
    return v.partition ? v.image + " partition " + std::to_string(*v.partition) : v.image;
}

}  // namespace

AuditReport audit(const std::vector<std::filesystem::path>& paths, const AuditOptions& options) {
    if (paths.empty() && !options.ledger) throw FormatError("audit needs at least one path or a ledger");
    AuditReport report;
    report.max_per_key = options.max_per_key;
    Scan scan{options, report, {}};
    for (const auto& path : paths) audit_path(path, options.recursive, true, scan);
    if (options.scan_tang_keys) {
        // The same image reached twice (a path given twice, a directory and a file in it) counts once.
        auto& keys = report.tang_keys_in_images;
        std::stable_sort(keys.begin(), keys.end(), [](const FoundTangKey& a, const FoundTangKey& b) {
            return std::tie(a.image, a.offset) < std::tie(b.image, b.offset);
        });
        keys.erase(std::unique(keys.begin(), keys.end(),
                               [](const FoundTangKey& a, const FoundTangKey& b) {
                                   return a.image == b.image && a.offset == b.offset;
                               }),
                   keys.end());
        auto& bindings = scan.bindings;
        std::stable_sort(bindings.begin(), bindings.end(), [](const BindingTrust& a, const BindingTrust& b) {
            return std::tie(a.volume, a.keyslot) < std::tie(b.volume, b.keyslot);
        });
        bindings.erase(std::unique(bindings.begin(), bindings.end(),
                                   [](const BindingTrust& a, const BindingTrust& b) {
                                       return a.volume == b.volume && a.keyslot == b.keyslot;
                                   }),
                       bindings.end());
        match_exposures(scan);
    }

    std::map<std::string, AuditGroup> groups;
    for (const AuditedVolume& v : report.volumes) {
        AuditGroup& group = groups[v.fingerprint];
        group.fingerprint = v.fingerprint;
        // The same volume reached twice (a path given twice, a directory and a file in it) counts once.
        if (std::none_of(group.members.begin(), group.members.end(), [&](const AuditedVolume& m) {
                return m.image == v.image && m.partition == v.partition;
            }))
            group.members.push_back(v);
    }
    if (options.ledger) {
        // The whole farm's view: every record of the ledger, not only the keys found here. A key is shared when
        // more than one distinct image counts for it (committed, or reserved under a live lease).
        Ledger ledger = Ledger::open(*options.ledger);
        std::map<std::string, AuditGroup> recorded;
        for (const LedgerRecord& r : ledger.records()) {
            AuditGroup& group = recorded[r.fingerprint];
            group.fingerprint = r.fingerprint;
            if (!group.ledger_instances) group.ledger_instances = 0;
            if (r.max_instances > 0 && (!group.ledger_max_instances || r.max_instances < *group.ledger_max_instances))
                group.ledger_max_instances = r.max_instances;
            if (r.state == "expired") continue;
            auto& images = group.ledger_images;
            if (std::find(images.begin(), images.end(), r.image) == images.end()) {
                images.push_back(r.image);
                ++*group.ledger_instances;
            }
        }
        for (auto& [fingerprint, group] : groups) {
            group.ledger_instances = 0;
            if (auto found = recorded.find(fingerprint); found != recorded.end()) {
                group.ledger_instances = found->second.ledger_instances;
                group.ledger_max_instances = found->second.ledger_max_instances;
                group.ledger_images = std::move(found->second.ledger_images);
                recorded.erase(found);
            }
        }
        // Keys no scanned path holds (recorded by other builders, or every key when no path was given).
        for (auto& [fingerprint, group] : recorded)
            if (group.ledger_instances.value_or(0) > 1) groups.emplace(fingerprint, std::move(group));
    }
    for (auto& [fingerprint, group] : groups) {
        const std::uint64_t recorded = group.ledger_instances.value_or(0);
        group.flagged = group.members.size() > options.max_per_key || recorded > options.max_per_key ||
                        (group.ledger_max_instances && recorded > *group.ledger_max_instances);
        report.groups.push_back(std::move(group));
    }
    const auto size = [](const AuditGroup& g) {
        return std::max<std::uint64_t>(g.members.size(), g.ledger_instances.value_or(0));
    };
    std::stable_sort(report.groups.begin(), report.groups.end(),
                     [&](const AuditGroup& a, const AuditGroup& b) { return size(a) > size(b); });
    return report;
}

std::size_t AuditReport::flagged_groups() const {
    return static_cast<std::size_t>(std::count_if(groups.begin(), groups.end(), [](const AuditGroup& g) { return g.flagged; }));
}

std::string AuditReport::to_json() const {
    JsonPtr root = json_take(json_object());
    json_t* r = root.get();
    json_object_set_new(r, "max_per_key", json_integer(static_cast<json_int_t>(max_per_key)));
    json_object_set_new(r, "volumes_scanned", json_integer(static_cast<json_int_t>(volumes.size())));
    json_object_set_new(r, "distinct_keys", json_integer(static_cast<json_int_t>(groups.size())));
    json_object_set_new(r, "flagged_groups", json_integer(static_cast<json_int_t>(flagged_groups())));
    json_t* group_list = json_array();
    for (const AuditGroup& g : groups) {
        json_t* o = json_object();
        json_object_set_new(o, "fingerprint", json_string(g.fingerprint.c_str()));
        json_object_set_new(o, "count", json_integer(static_cast<json_int_t>(g.members.size())));
        json_object_set_new(o, "flagged", json_boolean(g.flagged));
        json_t* members = json_array();
        for (const AuditedVolume& v : g.members) json_array_append_new(members, volume_json(v));
        json_object_set_new(o, "members", members);
        if (g.ledger_instances) {
            json_t* ledger = json_object();
            json_object_set_new(ledger, "instances", json_integer(static_cast<json_int_t>(*g.ledger_instances)));
            json_t* images = json_array();
            for (const auto& image : g.ledger_images) json_array_append_new(images, json_string(image.c_str()));
            json_object_set_new(ledger, "images", images);
            json_object_set_new(ledger, "max_instances",
                                g.ledger_max_instances ? json_integer(static_cast<json_int_t>(*g.ledger_max_instances))
                                                       : json_null());
            json_object_set_new(o, "ledger", ledger);
        }
        json_array_append_new(group_list, o);
    }
    json_object_set_new(r, "groups", group_list);
    json_t* skipped_list = json_array();
    for (const auto& [path, reason] : skipped) {
        json_t* o = json_object();
        json_object_set_new(o, "path", json_string(path.c_str()));
        json_object_set_new(o, "reason", json_string(reason.c_str()));
        json_array_append_new(skipped_list, o);
    }
    json_object_set_new(r, "skipped", skipped_list);
    json_t* key_list = json_array();
    for (const FoundTangKey& k : tang_keys_in_images) {
        json_t* o = json_object();
        json_object_set_new(o, "image", json_string(k.image.c_str()));
        json_object_set_new(o, "partition", k.partition ? json_integer(*k.partition) : json_null());
        json_object_set_new(o, "offset", k.offset ? json_integer(static_cast<json_int_t>(*k.offset)) : json_null());
        json_object_set_new(o, "kty", json_string(k.kty.c_str()));
        json_object_set_new(o, "alg", json_string(k.alg.c_str()));
        json_object_set_new(o, "thumbprint", json_string(k.thumbprint.c_str()));
        json_array_append_new(key_list, o);
    }
    json_object_set_new(r, "tang_keys_in_images", key_list);
    json_t* exposure_list = json_array();
    for (const TangKeyExposure& x : tang_key_exposures) {
        json_t* o = json_object();
        json_object_set_new(o, "volume", json_string(x.volume.c_str()));
        json_object_set_new(o, "keyslot", json_integer(x.keyslot));
        json_object_set_new(o, "url", json_string(x.url.c_str()));
        json_object_set_new(o, "role", json_string(x.role.c_str()));
        json_object_set_new(o, "thumbprint", json_string(x.thumbprint.c_str()));
        json_object_set_new(o, "key_location", json_string(x.key_location.c_str()));
        json_object_set_new(o, "same_image", json_boolean(x.same_image));
        json_array_append_new(exposure_list, o);
    }
    json_object_set_new(r, "tang_key_exposures", exposure_list);
    return detail::json_dump(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

std::string AuditReport::to_text() const {
    std::ostringstream out;
    out << volumes.size() << " LUKS volume" << (volumes.size() == 1 ? "" : "s") << ", " << groups.size()
        << " distinct volume key" << (groups.size() == 1 ? "" : "s") << ", " << flagged_groups()
        << " shared beyond the limit of " << max_per_key << " per key\n";
    for (const AuditGroup& g : groups) {
        out << (g.flagged ? "SHARED " : "ok     ") << g.fingerprint.substr(0, 16) << "  " << g.members.size()
            << (g.members.size() == 1 ? " image" : " images");
        if (g.ledger_instances) {
            out << " (ledger: " << *g.ledger_instances;
            if (g.ledger_max_instances) out << ", reserved under a limit of " << *g.ledger_max_instances;
            out << ")";
        }
        out << "\n";
        for (const AuditedVolume& v : g.members) {
            out << "         " << describe(v) << (v.luks_version == 1 ? " (LUKS1)" : "") << "\n";
            for (const AuditedBinding& b : v.clevis) {
                out << "           clevis ";
                if (!b.problem.empty())
                    out << (b.keyslot >= 0 ? std::to_string(b.keyslot) + ": " : "") << "unreadable: " << b.problem;
                else
                    out << b.keyslot << ": " << b.pin << " '" << b.config << "'";
                out << "\n";
            }
        }
        if (g.members.empty())
            for (const std::string& image : g.ledger_images) out << "         ledger: " << image << "\n";
    }
    for (const auto& [path, reason] : skipped) out << "skipped " << path << ": " << reason << "\n";
    for (const FoundTangKey& k : tang_keys_in_images)
        out << "TANG PRIVATE KEY in " << k.location << ": " << k.kty << (k.alg.empty() ? "" : " " + k.alg)
            << " key " << k.thumbprint << " (a Tang key must never travel with the data it protects)\n";
    for (const TangKeyExposure& x : tang_key_exposures)
        out << "EXPOSED " << x.volume << " keyslot " << x.keyslot << ": the " << x.role << " key " << x.thumbprint
            << " of " << x.url << " it trusts is " << (x.same_image ? "on the same image, " : "on this host, ")
            << x.key_location << "\n";
    return out.str();
}

}  // namespace luksforge
