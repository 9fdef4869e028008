// The image pipeline (pipeline.hpp): seal, stamp, clone, audit — with a policy file, like the CLI.
#include "bindings.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pipeline.hpp>
#include <luksforge/policy.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

namespace luksforge::python {
namespace {

using namespace pybind11::literals;

// The pin to bind: the policy's (validated) when a policy file is given, else `pin` + `config`.
struct PinChoice {
    std::optional<PinBinding> binding;
    PinOptions pin_options;
    std::optional<Pbkdf> keyslot_pbkdf;
    PolicySource source;
    std::optional<unsigned> max_instances_per_key;
};

PinChoice choose_pin(const std::optional<std::filesystem::path>& policy_path, const std::optional<std::string>& pin,
                     py::handle config, bool trust_on_first_use, const NetworkOptions* network) {
    PinChoice choice;
    choice.pin_options = pin_options(trust_on_first_use, network);
    if (!config.is_none() || pin) {
        if (!pin || config.is_none()) throw py::value_error("give pin and config together");
        if (policy_path) throw py::value_error("give a policy or pin + config, not both");
        choice.binding = PinBinding{*pin, json_text(config, "config")};
    }
    if (policy_path) {
        const NetworkOptions limits = network ? *network : NetworkOptions{};
        py::gil_scoped_release release;
        Policy policy = Policy::load(*policy_path);
        policy.require_valid();
        policy.require_no_tpm2("seal/stamp");
        Policy::Pin p = policy.pin();
        choice.binding = PinBinding{p.name, p.config_json};
        choice.pin_options = policy.pin_options(limits);
        if (trust_on_first_use) choice.pin_options.trust_on_first_use = true;
        choice.keyslot_pbkdf = policy.keyslot_pbkdf;
        choice.source = policy_source(*policy_path);
        choice.max_instances_per_key = policy.max_instances_per_key;
    }
    return choice;
}

template <typename Result, typename Work>
Result run_with_callbacks(std::vector<CallbackRelay*> relays, Work&& work) {
    std::optional<Result> result;
    std::exception_ptr failure;
    {
        py::gil_scoped_release release;
        try {
            result.emplace(work());
        } catch (...) {
            failure = std::current_exception();
        }
    }
    for (CallbackRelay* relay : relays) relay->rethrow_if_failed();  // a callback's exception is the cause
    if (failure) std::rethrow_exception(failure);
    return std::move(*result);
}

py::object json_object(const std::string& text) { return json_loads(text); }

}  // namespace

void register_pipeline(py::module_& m) {
    py::class_<PolicySource>(m, "PolicySource", "A policy file's path and SHA-256, as reports and the ledger record it.")
        .def_readonly("path", &PolicySource::path)
        .def_readonly("sha256", &PolicySource::sha256);
    m.def("policy_source", &policy_source, "path"_a);

    py::class_<TangServer>(m, "BoundTangServer", "A Tang server a binding depends on, read from its JWE.")
        .def_readonly("url", &TangServer::url)
        .def_readonly("exchange_thumbprint", &TangServer::exchange_thumbprint)
        .def_readonly("signing_thumbprints", &TangServer::signing_thumbprints);

    py::class_<SealReport>(m, "SealReport", "What seal did: fingerprints before/after, pins, checks passed.")
        .def_readonly("image", &SealReport::image)
        .def_readonly("partition", &SealReport::partition)
        .def_readonly("uuid", &SealReport::uuid)
        .def_readonly("already_sealed", &SealReport::already_sealed)
        .def_readonly("resumed_from", &SealReport::resumed_from)
        .def_readonly("fingerprint_before", &SealReport::fingerprint_before)
        .def_readonly("fingerprint_after", &SealReport::fingerprint_after)
        .def_readonly("pin", &SealReport::pin)
        .def_readonly("pin_config", &SealReport::pin_config)
        .def_readonly("servers", &SealReport::servers)
        .def_readonly("keyslot", &SealReport::keyslot)
        .def_readonly("token", &SealReport::token)
        .def_readonly("removed_keyslots", &SealReport::removed_keyslots)
        .def_readonly("checks_passed", &SealReport::checks_passed)
        .def_readonly("timings_seconds", &SealReport::timings_seconds)
        .def_readonly("policy", &SealReport::policy)
        .def_readonly("finished_at", &SealReport::finished_at)
        .def_readonly("data_path", &SealReport::data_path)
        .def_readonly("data_path_note", &SealReport::data_path_note)
        .def("to_json", &SealReport::to_json)
        .def("to_dict", [](const SealReport& r) { return json_object(r.to_json()); });

    py::class_<StampedInstance>(m, "StampedInstance", "One image written by stamp or clone.")
        .def_readonly("image", &StampedInstance::image)
        .def_readonly("uuid", &StampedInstance::uuid)
        .def_readonly("fingerprint", &StampedInstance::fingerprint)
        .def_readonly("keyslot", &StampedInstance::keyslot)
        .def_readonly("token", &StampedInstance::token)
        .def("__repr__", [](const StampedInstance& i) { return "StampedInstance('" + i.image.string() + "')"; });

    py::class_<StampReport>(m, "StampReport", "The instances stamp wrote.")
        .def_readonly("base", &StampReport::base)
        .def_readonly("base_fingerprint", &StampReport::base_fingerprint)
        .def_readonly("instances", &StampReport::instances)
        .def_readonly("data_path", &StampReport::data_path)
        .def_readonly("data_path_note", &StampReport::data_path_note)
        .def_readonly("data_bytes", &StampReport::data_bytes)
        .def_readonly("hole_bytes", &StampReport::hole_bytes)
        .def("to_json", &StampReport::to_json)
        .def("to_dict", [](const StampReport& r) { return json_object(r.to_json()); });

    py::class_<AuditedBinding>(m, "AuditedBinding", "A Clevis binding of an audited volume, as `clevis luks list` shows it.")
        .def_readonly("keyslot", &AuditedBinding::keyslot)
        .def_readonly("pin", &AuditedBinding::pin)
        .def_readonly("config", &AuditedBinding::config)
        .def_readonly("problem", &AuditedBinding::problem);
    py::class_<AuditedVolume>(m, "AuditedVolume")
        .def_readonly("image", &AuditedVolume::image)
        .def_readonly("partition", &AuditedVolume::partition)
        .def_readonly("luks_version", &AuditedVolume::luks_version)
        .def_readonly("uuid", &AuditedVolume::uuid)
        .def_readonly("fingerprint", &AuditedVolume::fingerprint)
        .def_readonly("clevis", &AuditedVolume::clevis);
    py::class_<AuditGroup>(m, "AuditGroup", "Volumes sharing one volume key.")
        .def_readonly("fingerprint", &AuditGroup::fingerprint)
        .def_readonly("members", &AuditGroup::members)
        .def_readonly("flagged", &AuditGroup::flagged)
        .def_readonly("ledger_instances", &AuditGroup::ledger_instances)
        .def_readonly("ledger_max_instances", &AuditGroup::ledger_max_instances)
        .def_readonly("ledger_images", &AuditGroup::ledger_images);
    py::class_<FoundTangKey>(m, "FoundTangKey", "A private JWK in a scanned image or a host Tang key directory.")
        .def_readonly("location", &FoundTangKey::location)
        .def_readonly("image", &FoundTangKey::image)
        .def_readonly("partition", &FoundTangKey::partition)
        .def_readonly("offset", &FoundTangKey::offset)
        .def_readonly("kty", &FoundTangKey::kty)
        .def_readonly("alg", &FoundTangKey::alg)
        .def_readonly("thumbprint", &FoundTangKey::thumbprint);
    py::class_<TangKeyExposure>(m, "TangKeyExposure", "A binding whose trusted Tang key is on its image or this host.")
        .def_readonly("volume", &TangKeyExposure::volume)
        .def_readonly("keyslot", &TangKeyExposure::keyslot)
        .def_readonly("url", &TangKeyExposure::url)
        .def_readonly("role", &TangKeyExposure::role)
        .def_readonly("thumbprint", &TangKeyExposure::thumbprint)
        .def_readonly("key_location", &TangKeyExposure::key_location)
        .def_readonly("same_image", &TangKeyExposure::same_image);
    py::class_<AuditReport>(m, "AuditReport", "Images grouped by volume-key fingerprint; groups beyond the limit flagged.")
        .def_readonly("max_per_key", &AuditReport::max_per_key)
        .def_readonly("volumes", &AuditReport::volumes)
        .def_readonly("groups", &AuditReport::groups)
        .def_readonly("skipped", &AuditReport::skipped)
        .def_readonly("tang_keys_in_images", &AuditReport::tang_keys_in_images)
        .def_readonly("tang_key_exposures", &AuditReport::tang_key_exposures)
        .def_property_readonly("flagged_groups", &AuditReport::flagged_groups)
        .def("to_json", &AuditReport::to_json)
        .def("to_dict", [](const AuditReport& r) { return json_object(r.to_json()); })
        .def("to_text", &AuditReport::to_text);

    m.def("seal_crash_points", &seal_crash_points);

    m.def("seal", [](const std::filesystem::path& image, py::handle build_passphrase,
                     std::optional<std::filesystem::path> policy, std::optional<std::string> pin, py::handle config,
                     std::optional<int> partition, std::optional<std::filesystem::path> ledger,
                     const std::optional<Pbkdf>& keyslot_pbkdf, bool trust_on_first_use,
                     const NetworkOptions* network, py::object on_step, py::object progress, bool copy) {
        SecretBuffer build = secret_from(build_passphrase, "build_passphrase");
        PinChoice choice = choose_pin(policy, pin, config, trust_on_first_use, network);
        if (!choice.binding) throw py::value_error("seal needs a policy or pin + config");
        SealOptions options;
        options.binding = *choice.binding;
        options.policy = choice.source;
        options.partition = partition;
        options.pin_options = choice.pin_options;
        if (keyslot_pbkdf) options.keyslot_pbkdf = *keyslot_pbkdf;
        else if (choice.keyslot_pbkdf) options.keyslot_pbkdf = *choice.keyslot_pbkdf;
        options.ledger = ledger;
        options.copy = copy;
        CallbackRelay step_relay(std::move(on_step)), progress_relay(std::move(progress));
        if (step_relay.active())
            options.on_step = [&step_relay](const std::string& name) { step_relay.notify(name); };
        options.on_progress = [&progress_relay](std::uint64_t done, std::uint64_t total) {
            progress_relay.notify(done, total);
        };
        return run_with_callbacks<SealReport>({&step_relay, &progress_relay},
                                              [&] { return seal(image, build, options); });
    }, "image"_a, "build_passphrase"_a, py::kw_only(), "policy"_a = py::none(), "pin"_a = py::none(),
       "config"_a = py::none(), "partition"_a = py::none(), "ledger"_a = py::none(), "keyslot_pbkdf"_a = py::none(),
       "trust_on_first_use"_a = false, "network"_a = py::none(), "on_step"_a = py::none(), "progress"_a = py::none(),
       "copy"_a = false,
       R"doc(Seal an image like `luksforge seal`: re-key to a fresh volume key, bind the policy's pin (or `pin` +
`config`), verify it through the real Tang servers, then remove the build passphrase. Crash-safe and resumable.
`copy=True` allows a copy (`seal --copy`): the sealed image is written in one pass next to it and renamed over it.

`on_step(name)` is called as each step starts, `progress(done_bytes, total_bytes)` during re-encryption (both
with the GIL held); an exception raised in either stops seal where it is (rerun seal to finish) and propagates.)doc");

    m.def("stamp", [](const std::filesystem::path& base, std::size_t count, const std::filesystem::path& out_dir,
                      std::optional<std::filesystem::path> policy, std::optional<std::string> pin, py::handle config,
                      std::optional<int> partition, std::optional<std::uint64_t> max_instances_per_key,
                      std::optional<std::filesystem::path> ledger, bool drop_other_keyslots,
                      const std::optional<Pbkdf>& keyslot_pbkdf, bool trust_on_first_use,
                      const NetworkOptions* network, py::object on_instance, bool dense, bool one_pass) {
        PinChoice choice = choose_pin(policy, pin, config, trust_on_first_use, network);
        StampOptions options;
        options.keep_holes = !dense;
        options.one_pass = one_pass;
        options.partition = partition;
        options.binding = choice.binding;
        options.policy = choice.source;
        options.max_instances_per_key = max_instances_per_key.value_or(choice.max_instances_per_key.value_or(1));
        options.ledger = ledger;
        options.pin_options = choice.pin_options;
        if (keyslot_pbkdf) options.keyslot_pbkdf = *keyslot_pbkdf;
        else if (choice.keyslot_pbkdf) options.keyslot_pbkdf = *choice.keyslot_pbkdf;
        options.drop_other_keyslots = drop_other_keyslots;
        CallbackRelay relay(std::move(on_instance));
        if (relay.active())
            options.on_instance = [&relay](const std::filesystem::path& path, std::size_t index, std::size_t total) {
                relay.notify(path, index, total);
            };
        return run_with_callbacks<StampReport>({&relay}, [&] { return stamp(base, count, out_dir, options); });
    }, "base"_a, "count"_a, "out_dir"_a, py::kw_only(), "policy"_a = py::none(), "pin"_a = py::none(),
       "config"_a = py::none(), "partition"_a = py::none(), "max_instances_per_key"_a = py::none(),
       "ledger"_a = py::none(), "drop_other_keyslots"_a = false, "keyslot_pbkdf"_a = py::none(),
       "trust_on_first_use"_a = false, "network"_a = py::none(), "on_instance"_a = py::none(), "dense"_a = false,
       "one_pass"_a = true,
       R"doc(Write `count` instances of the sealed `base` into `out_dir`, each with its own volume key, keyslot
passphrase and verified binding (like `luksforge stamp`; `dense` = `--dense`, `one_pass=False` =
`--libcryptsetup`). `on_instance(path, index, count)` is called as each
instance starts (index from 0); an exception raised in it stops stamping there and propagates.)doc");

    m.def("clone_image", [](const std::filesystem::path& base, const std::filesystem::path& out,
                            std::optional<std::filesystem::path> policy, std::optional<int> partition,
                            std::optional<std::uint64_t> max_instances_per_key,
                            std::optional<std::filesystem::path> ledger) {
        CloneOptions options;
        options.partition = partition;
        options.ledger = ledger;
        py::gil_scoped_release release;
        if (policy) {
            Policy p = Policy::load(*policy);
            options.max_instances_per_key = p.max_instances_per_key;
            options.policy = policy_source(*policy);
        }
        if (max_instances_per_key) options.max_instances_per_key = *max_instances_per_key;
        return clone_image(base, out, options);
    }, "base"_a, "out"_a, py::kw_only(), "policy"_a = py::none(), "partition"_a = py::none(),
       "max_instances_per_key"_a = py::none(), "ledger"_a = py::none(),
       "A sparse 0600 copy keeping the volume key; LimitError (nothing written) beyond the per-key limit.");

    m.def("copy_sparse", [](const std::filesystem::path& source, const std::filesystem::path& destination) {
        py::gil_scoped_release release;
        copy_sparse(source, destination);
    }, "source"_a, "destination"_a, "Copy keeping holes into a new 0600 file.");

    m.def("audit", [](const std::vector<std::filesystem::path>& paths, std::optional<std::uint64_t> max_per_key,
                      std::optional<std::filesystem::path> policy, std::optional<std::filesystem::path> ledger,
                      bool recursive, bool scan_tang_keys, std::optional<std::vector<std::filesystem::path>> tang_key_dirs) {
        AuditOptions options;
        options.ledger = ledger;
        options.recursive = recursive;
        options.scan_tang_keys = scan_tang_keys;
        if (tang_key_dirs) options.tang_key_dirs = *tang_key_dirs;
        py::gil_scoped_release release;
        if (policy) options.max_per_key = Policy::load(*policy).max_instances_per_key;
        if (max_per_key) options.max_per_key = *max_per_key;
        return audit(paths, options);
    }, "paths"_a, py::kw_only(), "max_per_key"_a = py::none(), "policy"_a = py::none(), "ledger"_a = py::none(),
       "recursive"_a = false, "scan_tang_keys"_a = true, "tang_key_dirs"_a = py::none(),
       "Group images/devices/directories by volume-key fingerprint; flag keys shared beyond the limit; find Tang "
       "private keys in plaintext partitions and bindings whose trusted Tang key is on the image or in tang_key_dirs "
       "(default /var/db/tang, /var/cache/tang).");
}

}  // namespace luksforge::python
