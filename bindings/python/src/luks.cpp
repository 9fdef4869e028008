// luksforge.Volume and its value types (luks.hpp): format, open, keyslots, tokens, inspect, rekey.
#include "bindings.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>


namespace luksforge::python {
namespace {

using namespace pybind11::literals;

Pbkdf make_pbkdf(const std::string& type, const std::string& hash, std::uint32_t iterations,
                 std::uint32_t memory_kib, std::uint32_t parallel, std::uint32_t time_ms) {
    Pbkdf p;
    p.type = Pbkdf::parse_type(type);
    p.hash = hash;
    p.iterations = iterations;
    p.memory_kib = memory_kib;
    p.parallel = parallel;
    p.time_ms = time_ms;
    return p;
}

std::string pbkdf_repr(const Pbkdf& p) {
    std::string text = "Pbkdf(type='" + std::string(Pbkdf::type_name(p.type)) + "'";
    if (p.type == Pbkdf::Type::pbkdf2) text += ", hash='" + p.hash + "'";
    text += ", iterations=" + std::to_string(p.iterations);
    if (p.type != Pbkdf::Type::pbkdf2)
        text += ", memory_kib=" + std::to_string(p.memory_kib) + ", parallel=" + std::to_string(p.parallel);
    if (p.time_ms) text += ", time_ms=" + std::to_string(p.time_ms);
    return text + ")";
}

std::vector<std::string_view> views_of(const std::vector<SecretBuffer>& secrets) {
    std::vector<std::string_view> views;
    views.reserve(secrets.size());
    for (const SecretBuffer& s : secrets) views.push_back(s.view());
    return views;
}

}  // namespace

void register_luks(py::module_& m) {
    py::class_<Pbkdf>(m, "Pbkdf", "Key derivation for one keyslot: argon2id/argon2i (memory, time, threads) or pbkdf2.")
        .def(py::init(&make_pbkdf), "type"_a = "argon2id", py::kw_only(), "hash"_a = "sha256", "iterations"_a = 0,
             "memory_kib"_a = 0, "parallel"_a = 0, "time_ms"_a = 0,
             "iterations 0 benchmarks to time_ms; memory_kib/parallel 0 take libcryptsetup's defaults.")
        .def_static("pbkdf2_fast", &Pbkdf::pbkdf2_fast, "iterations"_a = 1000,
                    "Cheap fixed-cost pbkdf2 (no benchmark), as Clevis uses for its random passphrases.")
        .def_property("type", [](const Pbkdf& p) { return std::string(Pbkdf::type_name(p.type)); },
                      [](Pbkdf& p, const std::string& t) { p.type = Pbkdf::parse_type(t); })
        .def_readwrite("hash", &Pbkdf::hash)
        .def_readwrite("iterations", &Pbkdf::iterations)
        .def_readwrite("memory_kib", &Pbkdf::memory_kib)
        .def_readwrite("parallel", &Pbkdf::parallel)
        .def_readwrite("time_ms", &Pbkdf::time_ms)
        .def("__repr__", &pbkdf_repr);

    py::class_<Keyslot>(m, "Keyslot", "One LUKS2 keyslot as inspected.")
        .def_readonly("id", &Keyslot::id)
        .def_readonly("bound_to_segment", &Keyslot::bound_to_segment)
        .def_readonly("key_bytes", &Keyslot::key_bytes)
        .def_readonly("priority", &Keyslot::priority)
        .def_readonly("pbkdf", &Keyslot::pbkdf)
        .def("__repr__", [](const Keyslot& k) {
            return "Keyslot(id=" + std::to_string(k.id) + ", " + pbkdf_repr(k.pbkdf) + ")";
        });

    py::class_<Token>(m, "Token", "One LUKS2 token: its type, JSON text and keyslots.")
        .def_readonly("id", &Token::id)
        .def_readonly("type", &Token::type)
        .def_readonly("json", &Token::json)
        .def_readonly("keyslots", &Token::keyslots)
        .def_property_readonly("data", [](const Token& t) { return json_loads(t.json); }, "The token JSON parsed.")
        .def("__repr__", [](const Token& t) {
            return "Token(id=" + std::to_string(t.id) + ", type='" + t.type + "')";
        });

    py::class_<Inspection>(m, "Inspection", "Everything public about a LUKS2 header, with the volume-key fingerprint.")
        .def_readonly("path", &Inspection::path)
        .def_readonly("uuid", &Inspection::uuid)
        .def_readonly("label", &Inspection::label)
        .def_readonly("subsystem", &Inspection::subsystem)
        .def_readonly("cipher", &Inspection::cipher)
        .def_readonly("volume_key_bytes", &Inspection::volume_key_bytes)
        .def_readonly("sector_size", &Inspection::sector_size)
        .def_readonly("data_offset_bytes", &Inspection::data_offset_bytes)
        .def_readonly("metadata_bytes", &Inspection::metadata_bytes)
        .def_readonly("keyslots_bytes", &Inspection::keyslots_bytes)
        .def_readonly("device_bytes", &Inspection::device_bytes)
        .def_readonly("reencryption_in_progress", &Inspection::reencryption_in_progress)
        .def_readonly("keyslots", &Inspection::keyslots)
        .def_readonly("tokens", &Inspection::tokens)
        .def_readonly("fingerprint", &Inspection::fingerprint)
        .def("to_json", &Inspection::to_json, "The `luksforge inspect --json` object as text.")
        .def("to_dict", [](const Inspection& i) { return json_loads(i.to_json()); },
             "The `luksforge inspect --json` object as a dict.")
        .def("__repr__", [](const Inspection& i) {
            return "Inspection(path='" + i.path + "', uuid='" + i.uuid + "', fingerprint='" + i.fingerprint + "')";
        });

    py::class_<RekeyResult>(m, "RekeyResult", "Fingerprints before and after a re-key and where keyslots moved.")
        .def_readonly("old_fingerprint", &RekeyResult::old_fingerprint)
        .def_readonly("new_fingerprint", &RekeyResult::new_fingerprint)
        .def_property_readonly("keyslot_map", [](const RekeyResult& r) {
            py::dict map;
            for (auto [from, to] : r.keyslot_map) map[py::int_(from)] = to;
            return map;
        }, "{old keyslot id: new keyslot id} for every keyslot that survived.")
        .def_readonly("completed", &RekeyResult::completed,
                      "False when the progress callback paused re-encryption; call rekey() again to resume.")
        .def("__repr__", [](const RekeyResult& r) {
            return "RekeyResult(old_fingerprint='" + r.old_fingerprint + "', new_fingerprint='" + r.new_fingerprint + "')";
        });

    m.def("ensure_file_size", [](const std::filesystem::path& file, std::uint64_t size) {
              py::gil_scoped_release release;
              Volume::ensure_file_size(file, size);
          }, "path"_a, "size"_a, "Create or extend a regular file to `size` bytes (sparse); never shrinks.");

    py::class_<PyVolume>(m, "Volume", R"doc(
A LUKS2 volume on an image file, partition or loop device.

Get one with Volume.open(), Volume.format() or Volume.probe(). It holds luksforge's advisory lock on the device
until close() or the end of its ``with`` block. Long operations (keyslot PBKDF, re-key) release the GIL.)doc")
        .def(py::init([]() -> PyVolume {
            throw py::type_error("use luksforge.Volume.open(), Volume.format() or Volume.probe()");
        }))
        .def_static("open", [](const std::filesystem::path& path, bool read_only) {
            py::gil_scoped_release release;
            return PyVolume(Volume::open(path, read_only ? Volume::Access::read_only : Volume::Access::read_write));
        }, "path"_a, py::kw_only(), "read_only"_a = false,
           "Load an existing LUKS2 header (NotFoundError, FormatError for non-LUKS or LUKS1, BusyError when locked).")
        .def_static("probe", [](const std::filesystem::path& path) -> std::optional<PyVolume> {
            py::gil_scoped_release release;
            std::optional<Volume> v = Volume::probe(path);
            if (!v) return std::nullopt;
            return PyVolume(std::move(*v));
        }, "path"_a, "Load any LUKS header (LUKS1 too) for inspection; None when the device is not LUKS.")
        .def_static("format", [](const std::filesystem::path& path, std::optional<std::uint64_t> size,
                                 const std::string& cipher, const std::string& cipher_mode,
                                 std::size_t volume_key_bytes, std::uint32_t sector_size,
                                 const std::optional<Pbkdf>& pbkdf, const std::string& label,
                                 const std::string& subsystem, const std::optional<std::string>& uuid,
                                 std::uint64_t metadata_bytes, std::uint64_t keyslots_bytes,
                                 py::handle volume_key, py::handle passphrase,
                                 const std::optional<Pbkdf>& keyslot_pbkdf) {
            std::optional<SecretBuffer> key = optional_secret_from(volume_key, "volume_key");
            std::optional<SecretBuffer> pass = optional_secret_from(passphrase, "passphrase");
            FormatOptions options;
            options.cipher = cipher;
            options.cipher_mode = cipher_mode;
            options.volume_key_bytes = key ? key->size() : volume_key_bytes;
            options.sector_size = sector_size;
            options.pbkdf = pbkdf;
            options.label = label;
            options.subsystem = subsystem;
            options.uuid = uuid;
            options.metadata_bytes = metadata_bytes;
            options.keyslots_bytes = keyslots_bytes;
            options.volume_key = key ? &*key : nullptr;
            py::gil_scoped_release release;
            if (size) Volume::ensure_file_size(path, *size);
            Volume volume = Volume::format(path, options);
            if (pass) volume.add_keyslot_by_volume_key(pass->view(), keyslot_pbkdf ? keyslot_pbkdf : pbkdf);
            return PyVolume(std::move(volume));
        }, "path"_a, py::kw_only(), "size"_a = py::none(), "cipher"_a = "aes", "cipher_mode"_a = "xts-plain64",
           "volume_key_bytes"_a = 64, "sector_size"_a = 0, "pbkdf"_a = py::none(), "label"_a = "",
           "subsystem"_a = "", "uuid"_a = py::none(), "metadata_bytes"_a = 0, "keyslots_bytes"_a = 0,
           "volume_key"_a = py::none(), "passphrase"_a = py::none(), "keyslot_pbkdf"_a = py::none(),
           R"doc(Format `path` as LUKS2 with a fresh volume key (or `volume_key`).

`size` creates or extends a regular file first. With `passphrase` a first keyslot is added from the volume key
still in memory (no second PBKDF run), using `keyslot_pbkdf` or else `pbkdf`.)doc")
        .def_property_readonly("path", [](const PyVolume& v) { return v.state->path; })
        .def_property_readonly("closed", &PyVolume::closed)
        .def_property_readonly("luks_version", [](PyVolume& v) { return v.run([](Volume& vol) { return vol.luks_version(); }); })
        .def_property_readonly("fingerprint", [](PyVolume& v) { return v.run([](Volume& vol) { return vol.fingerprint(); }); },
                               "Volume-key fingerprint (hex): equal exactly for clones sharing one volume key.")
        .def("close", &PyVolume::close, "Release the volume and its device lock (waits for work in flight).")
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](PyVolume& v, py::args) { v.close(); return false; })
        .def("__repr__", [](const PyVolume& v) {
            return "<luksforge.Volume '" + v.state->path.string() + "'" + (v.closed() ? " closed>" : ">");
        })
        .def("add_keyslot", [](PyVolume& v, py::handle existing, py::handle passphrase,
                               const std::optional<Pbkdf>& pbkdf, int slot) {
            SecretBuffer old_pass = secret_from(existing, "existing_passphrase");
            SecretBuffer new_pass = secret_from(passphrase, "passphrase");
            return v.run([&](Volume& vol) { return vol.add_keyslot(old_pass.view(), new_pass.view(), pbkdf, slot); });
        }, "existing_passphrase"_a, "passphrase"_a, py::kw_only(), "pbkdf"_a = py::none(), "slot"_a = -1,
           "Add a keyslot for `passphrase`, unlocking with `existing_passphrase`. Returns its id (AuthError if wrong).")
        .def("add_keyslot_by_volume_key", [](PyVolume& v, py::handle passphrase, const std::optional<Pbkdf>& pbkdf,
                                             int slot, py::handle volume_key) {
            SecretBuffer new_pass = secret_from(passphrase, "passphrase");
            std::optional<SecretBuffer> key = optional_secret_from(volume_key, "volume_key");
            return v.run([&](Volume& vol) {
                return vol.add_keyslot_by_volume_key(new_pass.view(), pbkdf, slot, key ? &*key : nullptr);
            });
        }, "passphrase"_a, py::kw_only(), "pbkdf"_a = py::none(), "slot"_a = -1, "volume_key"_a = py::none(),
           "Add a keyslot from the volume key format() left in memory, or from `volume_key`. Returns its id.")
        .def("remove_keyslot", [](PyVolume& v, int slot) { v.run([&](Volume& vol) { vol.remove_keyslot(slot); }); },
             "slot"_a)
        .def("test_passphrase", [](PyVolume& v, py::handle passphrase, int slot) {
            SecretBuffer pass = secret_from(passphrase, "passphrase");
            return v.run([&](Volume& vol) { return vol.test_passphrase(pass.view(), slot); });
        }, "passphrase"_a, py::kw_only(), "slot"_a = -1, "The keyslot `passphrase` opens, or None.")
        .def("volume_key", [](PyVolume& v, py::handle passphrase, int slot) {
            SecretBuffer pass = secret_from(passphrase, "passphrase");
            return Secret(v.run([&](Volume& vol) { return vol.volume_key(pass.view(), slot); }));
        }, "passphrase"_a, py::kw_only(), "slot"_a = -1, "Recover the volume key as a Secret (AuthError if wrong).")
        .def("keyslots", [](PyVolume& v) { return v.run([](Volume& vol) { return vol.keyslots(); }); })
        .def("keyslot", [](PyVolume& v, int slot) { return v.run([&](Volume& vol) { return vol.keyslot(slot); }); },
             "slot"_a, "The keyslot, or None when it is not in use.")
        .def("tokens", [](PyVolume& v) { return v.run([](Volume& vol) { return vol.tokens(); }); })
        .def("token", [](PyVolume& v, int id) { return v.run([&](Volume& vol) { return vol.token(id); }); }, "id"_a,
             "The token, or None when there is none with that id.")
        .def("set_token", [](PyVolume& v, py::handle json, int id) {
            std::string text = json_text(json, "json");
            return v.run([&](Volume& vol) { return vol.set_token(text, id); });
        }, "json"_a, py::kw_only(), "id"_a = -1,
           "Store token JSON (str or dict; needs \"type\" and \"keyslots\"). Returns the token id.")
        .def("remove_token", [](PyVolume& v, int id) { v.run([&](Volume& vol) { vol.remove_token(id); }); }, "id"_a)
        .def("assign_token", [](PyVolume& v, int token, int keyslot) {
            v.run([&](Volume& vol) { vol.assign_token(token, keyslot); });
        }, "token"_a, "keyslot"_a)
        .def("unassign_token", [](PyVolume& v, int token, int keyslot) {
            v.run([&](Volume& vol) { vol.unassign_token(token, keyslot); });
        }, "token"_a, "keyslot"_a)
        .def("inspect", [](PyVolume& v) { return v.run([](Volume& vol) { return vol.inspect(); }); })
        .def("rekey", [](PyVolume& v, py::handle passphrases, const std::optional<std::string>& cipher,
                         const std::optional<std::string>& cipher_mode, bool drop_other_keyslots,
                         std::uint64_t max_hotzone_bytes, py::object progress) {
            std::vector<SecretBuffer> secrets = secrets_from(passphrases, "passphrases");
            std::vector<std::string_view> views = views_of(secrets);
            CallbackRelay relay(std::move(progress));
            RekeyOptions options;
            options.cipher = cipher;
            options.cipher_mode = cipher_mode;
            options.drop_other_keyslots = drop_other_keyslots;
            options.max_hotzone_bytes = max_hotzone_bytes;
            options.progress = [&relay](const RekeyProgress& p) { return relay(p.done_bytes, p.total_bytes); };
            std::optional<RekeyResult> result;
            std::exception_ptr failure;
            try {
                result = v.run([&](Volume& vol) { return vol.rekey(views, options); });
            } catch (...) {
                failure = std::current_exception();
            }
            // An exception raised by the callback wins: it is why the library stopped.
            relay.rethrow_if_failed();
            if (failure) std::rethrow_exception(failure);
            return *result;
        }, "passphrases"_a, py::kw_only(), "cipher"_a = py::none(), "cipher_mode"_a = py::none(),
           "drop_other_keyslots"_a = false, "max_hotzone_bytes"_a = 0, "progress"_a = py::none(),
           R"doc(Replace the volume key by offline re-encryption (GIL released).

`passphrases` is one bytes-like passphrase or a list; every keyslot one of them opens survives. `progress` is
called as progress(done_bytes, total_bytes) with the GIL held; returning False pauses (resume with another
rekey call); an exception raised in it, or Ctrl-C, stops the re-encryption cleanly and propagates.
`max_hotzone_bytes` bounds the chunk re-encrypted between header commits (finer progress; 0 = default).)doc");
}

}  // namespace luksforge::python
