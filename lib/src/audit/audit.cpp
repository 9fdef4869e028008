// audit: find LUKS volumes in images, devices and directories, group them by volume-key fingerprint, and flag
// keys shared by more images than allowed.
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>

#include "util/json_util.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <sstream>

namespace luksforge {
namespace {

using detail::JsonPtr;
using detail::json_take;

std::string absolute_string(const std::filesystem::path& path) {
    std::error_code ec;
    auto absolute = std::filesystem::absolute(path, ec);
    return (ec ? path : absolute.lexically_normal()).string();
}

void audit_image(const std::filesystem::path& path, AuditReport& report) {
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
            report.volumes.push_back(std::move(audited));
        } catch (const Error& e) {
            report.skipped.emplace_back(targets[i].describe(), e.what());
        }
    }
}

void audit_path(const std::filesystem::path& path, bool recursive, bool top, AuditReport& report) {
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
            audit_path(entry, recursive, false, report);
        }
        return;
    }
    if (std::filesystem::is_regular_file(status) || std::filesystem::is_block_file(status)) {
        audit_image(path, report);
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
    return o;
}

std::string describe(const AuditedVolume& v) {
    return v.partition ? v.image + " partition " + std::to_string(*v.partition) : v.image;
}

}  // namespace

AuditReport audit(const std::vector<std::filesystem::path>& paths, const AuditOptions& options) {
    if (paths.empty()) throw FormatError("audit needs at least one path");
    AuditReport report;
    report.max_per_key = options.max_per_key;
    for (const auto& path : paths) audit_path(path, options.recursive, true, report);

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
    std::optional<Ledger> ledger;
    if (options.ledger) ledger = Ledger::open(*options.ledger);
    for (auto& [fingerprint, group] : groups) {
        group.flagged = group.members.size() > options.max_per_key;
        if (ledger) {
            group.ledger_instances = ledger->count_instances(fingerprint);
            for (const LedgerRecord& r : ledger->records(fingerprint))
                if (std::find(group.ledger_images.begin(), group.ledger_images.end(), r.image) == group.ledger_images.end())
                    group.ledger_images.push_back(r.image);
        }
        report.groups.push_back(std::move(group));
    }
    std::stable_sort(report.groups.begin(), report.groups.end(),
                     [](const AuditGroup& a, const AuditGroup& b) { return a.members.size() > b.members.size(); });
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
        if (g.ledger_instances) out << " (ledger: " << *g.ledger_instances << ")";
        out << "\n";
        for (const AuditedVolume& v : g.members) out << "         " << describe(v) << "\n";
    }
    for (const auto& [path, reason] : skipped) out << "skipped " << path << ": " << reason << "\n";
    return out.str();
}

}  // namespace luksforge
