// The key ledger (ledger.hpp): SQLite records of volume-key fingerprints, atomic per-key instance limits.
#include "bindings.hpp"

#include <luksforge/ledger.hpp>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

namespace luksforge::python {
namespace {

using namespace pybind11::literals;

// One sqlite3 connection must not be used by two threads at once: calls are serialised, and close() waits.
struct LedgerState {
    std::mutex mutex;
    std::optional<Ledger> ledger;
    std::filesystem::path path;
};

struct PyLedger {
    std::shared_ptr<LedgerState> state = std::make_shared<LedgerState>();

    template <typename Work>
    auto run(Work&& work) {
        std::shared_ptr<LedgerState> keep = state;
        py::gil_scoped_release release;
        std::lock_guard lock(keep->mutex);
        if (!keep->ledger) throw py::value_error("operation on a closed luksforge.Ledger");
        return work(*keep->ledger);
    }
    void close() {
        std::shared_ptr<LedgerState> keep = state;
        py::gil_scoped_release release;
        std::lock_guard lock(keep->mutex);
        keep->ledger.reset();
    }
};

LedgerRecord make_record(std::string fingerprint, std::string image, std::string uuid, std::string time,
                         std::string policy_path, std::string policy_hash, std::string event) {
    LedgerRecord r;
    r.fingerprint = std::move(fingerprint);
    r.image = std::move(image);
    r.uuid = std::move(uuid);
    r.time = std::move(time);
    r.policy_path = std::move(policy_path);
    r.policy_hash = std::move(policy_hash);
    r.event = std::move(event);
    return r;
}

}  // namespace

void register_ledger(py::module_& m) {
    py::class_<LedgerRecord>(m, "LedgerRecord", "One ledger entry: a volume-key fingerprint and the image carrying it.")
        .def(py::init(&make_record), py::kw_only(), "fingerprint"_a, "image"_a, "uuid"_a = "", "time"_a = "",
             "policy_path"_a = "", "policy_hash"_a = "", "event"_a = "")
        .def_readonly("id", &LedgerRecord::id)
        .def_readwrite("fingerprint", &LedgerRecord::fingerprint)
        .def_readwrite("image", &LedgerRecord::image)
        .def_readwrite("uuid", &LedgerRecord::uuid)
        .def_readwrite("time", &LedgerRecord::time)
        .def_readwrite("policy_path", &LedgerRecord::policy_path)
        .def_readwrite("policy_hash", &LedgerRecord::policy_hash)
        .def_readwrite("event", &LedgerRecord::event)
        .def_readonly("state", &LedgerRecord::state)
        .def_readonly("lease_expires", &LedgerRecord::lease_expires)
        .def_readonly("max_instances", &LedgerRecord::max_instances)
        .def_readwrite("host", &LedgerRecord::host)
        .def("__repr__", [](const LedgerRecord& r) {
            return "LedgerRecord(id=" + std::to_string(r.id) + ", fingerprint='" + r.fingerprint + "', image='" +
                   r.image + "', event='" + r.event + "')";
        });

    py::class_<PyLedger>(m, "Ledger", "The key ledger (an SQLite file or a postgresql:// URL; safe with concurrent writers). A context manager.")
        .def(py::init([](std::optional<std::filesystem::path> path) {
            PyLedger l;
            l.state->path = path.value_or(Ledger::default_path());
            {
                py::gil_scoped_release release;
                l.state->ledger.emplace(Ledger::open(l.state->path));
            }
            return l;
        }), "path"_a = py::none(), "Open (creating it when missing) the ledger at `path` (default: default_path()).")
        .def_static("default_path", &Ledger::default_path)
        .def_property_readonly("path", [](const PyLedger& l) { return l.state->path; })
        .def("record", [](PyLedger& l, LedgerRecord record) {
            return l.run([&](Ledger& ledger) { return ledger.record(std::move(record)); });
        }, "record"_a, "Append a record unconditionally; returns its id.")
        .def("reserve", [](PyLedger& l, LedgerRecord record, std::uint64_t max_instances) {
            return l.run([&](Ledger& ledger) { return ledger.reserve(std::move(record), max_instances); });
        }, "record"_a, py::kw_only(), "max_instances"_a,
           "Reserve a leased slot: append only if at most `max_instances` images then carry the fingerprint "
           "(LimitError otherwise). commit() it once the image exists, release() it when making it failed.")
        .def("commit", [](PyLedger& l, std::int64_t id) { l.run([&](Ledger& ledger) { ledger.commit(id); }); },
             "id"_a, "Make a reservation permanent (LimitError when its lease ran out and the slot was taken).")
        .def("release", [](PyLedger& l, std::int64_t id) { l.run([&](Ledger& ledger) { ledger.release(id); }); },
             "id"_a)
        .def("count_instances", [](PyLedger& l, const std::string& fingerprint) {
            return l.run([&](Ledger& ledger) { return ledger.count_instances(fingerprint); });
        }, "fingerprint"_a)
        .def("records", [](PyLedger& l, std::optional<std::string> fingerprint) {
            return l.run([&](Ledger& ledger) { return ledger.records(fingerprint); });
        }, "fingerprint"_a = py::none(), "All records, or those of one fingerprint, oldest first.")
        .def("close", &PyLedger::close)
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](PyLedger& l, py::args) { l.close(); return false; });

    m.def("utc_timestamp", &utc_timestamp, "Current UTC time as ISO 8601 ('2026-11-29T10:57:45Z').");
}

}  // namespace luksforge::python
