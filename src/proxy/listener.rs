//! Accept loop, limits, graceful shutdown.

use crate::config::Config;

pub async fn serve(_config: Config) -> Result<(), std::io::Error> {
    Ok(())
}
