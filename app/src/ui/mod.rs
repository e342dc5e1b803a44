//! The page's components, one per part of the screen; each reads the page
//! state from context (`expect_context::<AppState>()`).

mod about;
mod canvas;
mod controls;
mod gallery;
mod models;
mod status;

pub use about::About;
pub use canvas::CanvasColumn;
pub use controls::Controls;
pub use gallery::Gallery;
pub use models::ModelManager;
pub use status::StatusPanel;
