//! libvirt's push-mode backup job (`virDomainBackupBegin`), which the
//! `virt` 0.5 crate does not wrap: QEMU copies a disk as of the job's start
//! into a file while the guest runs on, so a copy of a running server's
//! disk costs it no pause. This is the agent's one module of direct calls
//! into `virt::sys`; each call is commented with what makes it sound.

use std::ffi::{CStr, CString, c_char, c_int, c_uint};

use virt::domain::Domain;
use virt::error::{Error, ErrorNumber, ErrorNumberEnum};
use virt::sys;

use crate::error::AgentError;

/// How the last job of a domain ended, as libvirt keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Failed(String),
    /// The last job libvirt remembers is no backup (or it forgot it).
    Unknown,
}

/// Whether libvirt said that this hypervisor has no backup jobs (the test
/// driver; a QEMU too old for them).
pub(crate) fn unsupported(error: &Error) -> bool {
    matches!(
        error.code(),
        ErrorNumberEnum::Known(ErrorNumber::NoSupport | ErrorNumber::OperationUnsupported)
    )
}

/// Starts a push-mode backup described by `backup_xml`, whose target files
/// exist already (`VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL`): libvirt must
/// write into the pool's volume, never create a file of its own.
pub(crate) fn begin(domain: &Domain, backup_xml: &str) -> Result<(), AgentError> {
    let xml = CString::new(backup_xml)
        .map_err(|_| AgentError::BadRequest("a backup description holds a NUL byte".into()))?;
    // SAFETY: `domain.as_ptr()` is a live virDomainPtr for the borrow of
    // `domain`; `xml` is NUL-terminated and outlives the call; libvirt
    // accepts a null checkpoint XML (no checkpoint is made) and copies
    // what it keeps of both strings.
    let started = unsafe {
        sys::virDomainBackupBegin(
            domain.as_ptr(),
            xml.as_ptr(),
            std::ptr::null(),
            sys::VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
        )
    };
    if started < 0 {
        return Err(Error::last_error().into());
    }
    Ok(())
}

/// Asks libvirt to abort the domain's running job; it is over when
/// [`running`] says none runs.
pub(crate) fn abort(domain: &Domain) -> Result<(), Error> {
    // SAFETY: a live virDomainPtr for the borrow of `domain`.
    if unsafe { sys::virDomainAbortJob(domain.as_ptr()) } < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// Whether the domain runs a job now, with the bytes it has processed.
pub(crate) fn running(domain: &Domain) -> Result<Option<u64>, Error> {
    let info = domain.job_info()?;
    Ok((info.r#type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| info.data_processed.unwrap_or(0)))
}

/// How the domain's last job ended.
pub(crate) fn ended(domain: &Domain) -> Result<Ended, Error> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: a live virDomainPtr; the three out-pointers point at locals.
    // libvirt allocates `params`, which is freed below with
    // virTypedParamsFree (never by Rust's allocator).
    let answered = unsafe {
        sys::virDomainGetJobStats(
            domain.as_ptr(),
            &mut kind,
            &mut params,
            &mut count,
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED as c_uint,
        )
    };
    if answered < 0 {
        return Err(Error::last_error());
    }
    let mut operation: c_int = 0;
    let mut message: *const c_char = std::ptr::null();
    // SAFETY: `params`/`count` are what libvirt just returned; the names are
    // NUL-terminated constants; the out-pointers point at locals. The
    // message points into `params` and is copied before they are freed.
    let ended = unsafe {
        let has_operation = sys::virTypedParamsGetInt(
            params,
            count,
            sys::VIR_DOMAIN_JOB_OPERATION.as_ptr().cast(),
            &mut operation,
        ) == 1;
        let has_message = sys::virTypedParamsGetString(
            params,
            count,
            sys::VIR_DOMAIN_JOB_ERRMSG.as_ptr().cast(),
            &mut message,
        ) == 1
            && !message.is_null();
        let message = has_message.then(|| CStr::from_ptr(message).to_string_lossy().into_owned());
        sys::virTypedParamsFree(params, count);
        let backup = has_operation && operation == sys::VIR_DOMAIN_JOB_OPERATION_BACKUP as c_int;
        const COMPLETED: c_int = sys::VIR_DOMAIN_JOB_COMPLETED as c_int;
        const FAILED: c_int = sys::VIR_DOMAIN_JOB_FAILED as c_int;
        const CANCELLED: c_int = sys::VIR_DOMAIN_JOB_CANCELLED as c_int;
        match kind {
            _ if !backup => Ended::Unknown,
            COMPLETED => Ended::Completed,
            FAILED | CANCELLED => {
                Ended::Failed(message.unwrap_or_else(|| "libvirt gave no reason".into()))
            }
            _ => Ended::Unknown,
        }
    };
    Ok(ended)
}
