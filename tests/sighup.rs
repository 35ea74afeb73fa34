//! SIGHUP never stops keyward. Alone in its own test binary: a handler installed
//! by any other in-process keyward (one with a config file) would hide the bug.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn sighup_without_a_config_file_does_not_stop_keyward() {
    // The same config, parsed from text: no file to reload, so SIGHUP has nothing
    // to do; before, no handler was installed and SIGHUP ended the process (this
    // test binary, here).
    let kw = Kw::builder().without_config_file().start().await;
    assert!(!kw.config_path.exists(), "no file to reload");

    // SAFETY: sending SIGHUP to this very process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut s = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nhost: api.openai.com:443\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_head(&mut s).await;
    assert_eq!(status, 407, "still serving: {head}");
    drop(s);
    kw.running.shutdown().await;
}
