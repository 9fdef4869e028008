// Internal: libpq's entry points, loaded on first use (util/dynamic_library.hpp says why). Only a ledger at a
// postgresql:// URL needs them, so no other command loads libpq and its Kerberos and LDAP libraries.
#pragma once

#include <libpq-fe.h>

namespace luksforge::detail {

struct LibpqApi {
    decltype(&::PQconninfoParse) conninfoParse;
    decltype(&::PQconninfoFree) conninfoFree;
    decltype(&::PQfreemem) freemem;
    decltype(&::PQconnectdbParams) connectdbParams;
    decltype(&::PQstatus) status;
    decltype(&::PQsetNoticeProcessor) setNoticeProcessor;
    decltype(&::PQfinish) finish;
    decltype(&::PQerrorMessage) errorMessage;
    decltype(&::PQexec) exec;
    decltype(&::PQexecParams) execParams;
    decltype(&::PQresultStatus) resultStatus;
    decltype(&::PQresultErrorField) resultErrorField;
    decltype(&::PQntuples) ntuples;
    decltype(&::PQgetvalue) getvalue;
    decltype(&::PQgetisnull) getisnull;
    decltype(&::PQclear) clear;
};

// The table, loading libpq.so.5 on the first call (thread-safe); throws luksforge::Error (ELIBACC) when it
// cannot, and tries again on the next call.
const LibpqApi& libpq();

}  // namespace luksforge::detail
