//! Hazel's inventory, as pure data: hosts and their child targets, snapshots,
//! the selector grammar and its resolution, the search index and the inventory
//! file format. Nothing here does IO or knows a driver; the agent refreshes
//! snapshots through drivers and hands them to this crate.

pub mod error;
pub mod file;
pub mod finding;
pub mod index;
pub mod model;
pub mod port;
pub mod query;
pub mod selector;

pub use file::{parse_inventory, render_inventory, Format, InventoryFileError};
pub use finding::{Finding, Severity};
pub use index::{HostInventory, Inventory};
pub use model::Target;
pub use port::{compress_runs, Port, PortRange};
pub use selector::{
    id_form, parse_selector, IdForm, Resolution, Selector, SelectorError, SelectorMode,
};
