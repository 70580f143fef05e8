//! xlb's agent as a library; the `xlb` binary (`main.rs`) only parses the command line and calls
//! in here.
//!
//! - [`dataplane`]: the only code that touches BPF programs and maps.
//! - [`maglev`]: builds the weighted Maglev tables the datapath looks backends up in.

pub mod dataplane;
pub mod maglev;
