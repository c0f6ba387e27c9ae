//! The SSH server of one VM's console (russh, server side).
//!
//! - Authentication: a console user's public key or password
//!   ([`super::auth::Access`]); nothing else.
//! - A session's `shell` request (with or without a pty) attaches to the
//!   serial console: the scroll-back since power-on, then live output;
//!   what the client types goes to the guest. Closing the channel (the
//!   OpenSSH client's `~.`) detaches. `exec` and subsystems are refused.
//! - `direct-tcpip` (`ssh -L 9999:MGMT:5900`) to port 5900 on the
//!   management address (or `localhost`) is joined to qemu's VNC socket;
//!   any other destination is refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::PrivateKey;
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handler, Msg, PublicKeyOffer, Server, Session,
    VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::Access;
use super::serial::{Output, Serial};

/// The port VNC is reached on through the tunnel (display :0).
pub const VNC_PORT: u32 = 5900;

/// What every connection to one VM's console shares.
pub struct Target {
    pub vm: String,
    pub serial: Serial,
    pub access: Arc<RwLock<Access>>,
    /// qemu's VNC socket.
    pub vnc: PathBuf,
    /// The VM's management address (a forwarding destination).
    pub management: Option<IpAddr>,
    /// Cancelled when the VM has ended (rather than the agent stopping).
    pub ended: CancellationToken,
    /// The attached sessions, so they can say goodbye before the server
    /// disconnects everyone.
    pub sessions: TaskTracker,
}

impl Target {
    fn access(&self) -> Access {
        self.access.read().expect("access poisoned").clone()
    }

    /// Whether `ssh -L …:HOST:PORT` may reach VNC.
    pub fn forward_allowed(&self, host: &str, port: u32) -> bool {
        if port != VNC_PORT {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || Some(ip) == self.management,
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// The server's settings: keys and passwords only, no idle timeout (a
/// console may be watched for hours) but keepalives to find dead clients.
pub fn config(key: PrivateKey) -> Config {
    Config {
        server_id: russh::SshId::Standard("SSH-2.0-bigv-console".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

/// Serves `listener` until `stop`; then disconnects every client.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    target: Arc<Target>,
    stop: CancellationToken,
) {
    let mut server = ConsoleServer {
        target: target.clone(),
    };
    // russh's accept loop ends at the first accept error (EMFILE, say):
    // start it again after a pause, keeping a handle on each run's
    // connections.
    let mut handles = Vec::new();
    loop {
        let mut running = server.run_on_socket(config.clone(), &listener);
        handles.push(running.handle());
        tokio::select! {
            r = &mut running => if let Err(error) = r {
                tracing::warn!(vm = %target.vm, %error, "the console's SSH listener failed; accepting again in a second");
            },
            _ = stop.cancelled() => break,
        }
        drop(running);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
    }
    // Stop accepting at once (a restarted agent binds the port again);
    // the handles keep the connections until they are told to go.
    drop(listener);
    // Attached sessions end with the serial console, telling their
    // clients why; then the rest are disconnected.
    target.sessions.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), target.sessions.wait()).await;
    // What they queued goes out before the disconnect (which russh sends
    // ahead of queued data).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for handle in handles {
        handle.shutdown("the VM no longer runs on this head".into());
    }
}

struct ConsoleServer {
    target: Arc<Target>,
}

impl Server for ConsoleServer {
    type Handler = Client;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Client {
        Client {
            target: self.target.clone(),
            peer,
            user: None,
            sessions: HashMap::new(),
        }
    }
}

/// One SSH connection.
struct Client {
    target: Arc<Target>,
    peer: Option<SocketAddr>,
    /// Set once authenticated.
    user: Option<String>,
    /// Session channels not yet attached (waiting for `shell`).
    sessions: HashMap<ChannelId, Channel<Msg>>,
}

impl Client {
    fn accepted(&mut self, user: &str, how: &str) -> Auth {
        tracing::info!(vm = %self.target.vm, user, peer = ?self.peer, how, "console login");
        self.user = Some(user.to_owned());
        Auth::Accept
    }

    fn refused(&self, user: &str, how: &str) -> Auth {
        tracing::info!(vm = %self.target.vm, user, peer = ?self.peer, how, "console login refused");
        Auth::reject()
    }
}

impl Handler for Client {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.target.access().key_allowed(user, offer.public_key) {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.target.access().key_allowed(user, key.public_key) {
            self.accepted(user, "publickey")
        } else {
            self.refused(user, "publickey")
        })
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let access = self.target.access();
        if !access.has_password(user) {
            return Ok(self.refused(user, "password"));
        }
        let (u, p) = (user.to_owned(), password.to_owned());
        // argon2 is slow on purpose: off the async workers.
        let ok = tokio::task::spawn_blocking(move || access.password_allowed(&u, &p))
            .await
            .unwrap_or(false);
        Ok(if ok {
            self.accepted(user, "password")
        } else {
            self.refused(user, "password")
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The guest's console has no size to set; the pty only makes the
        // client's terminal raw (and its `~.` escape work).
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ch) = self.sessions.remove(&channel) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let target = self.target.clone();
        let user = self.user.clone().unwrap_or_default();
        target.sessions.spawn(attach(target.clone(), user, ch));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let vm = &self.target.vm;
        if !self.target.forward_allowed(host, port) {
            tracing::info!(vm = %vm, user = ?self.user, host, port, "console forwarding refused");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let mut vnc = match tokio::net::UnixStream::connect(&self.target.vnc).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(vm = %vm, %error, "connecting to the VM's VNC socket");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        tracing::info!(vm = %vm, user = ?self.user, "VNC forwarded");
        reply.accept().await;
        tokio::spawn(async move {
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut vnc).await;
        });
        Ok(())
    }
}

fn note(text: &str) -> Bytes {
    Bytes::from(format!("\r\n[bigv: {text}]\r\n"))
}

/// Joins one session channel to the serial console until either ends.
async fn attach(target: Arc<Target>, user: String, ch: Channel<Msg>) {
    let (mut from_client, to_client) = ch.split();
    let Some(mut console) = target.serial.attach().await else {
        let _ = to_client.data_bytes(note("the VM is not running")).await;
        let _ = to_client.close().await;
        return;
    };
    tracing::info!(vm = %target.vm, user, "attached to the serial console");
    let scrollback = std::mem::take(&mut console.scrollback);
    if !scrollback.is_empty() && to_client.data_bytes(Bytes::from(scrollback)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = console.next() => match out {
                Output::Data(b) => if to_client.data_bytes(b).await.is_err() {
                    break;
                },
                Output::Lost(n) => {
                    let text = format!("this connection fell behind; {n} chunks of output were skipped");
                    let _ = to_client.data_bytes(note(&text)).await;
                }
                Output::Closed => {
                    let why = if target.ended.is_cancelled() {
                        "the VM stopped"
                    } else {
                        "the head agent is restarting; connect again in a moment"
                    };
                    let _ = to_client.data_bytes(note(why)).await;
                    break;
                }
            },
            msg = from_client.wait() => match msg {
                Some(ChannelMsg::Data { data }) => if !console.send(data).await {
                    break;
                },
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    tracing::info!(vm = %target.vm, user, "detached from the serial console");
    let _ = to_client.exit_status(0).await;
    let _ = to_client.eof().await;
    let _ = to_client.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vnc_on_the_management_address_is_forwarded() {
        let t = Target {
            vm: "t".into(),
            serial: Serial::detached(),
            access: Default::default(),
            vnc: "/nonexistent".into(),
            management: Some("192.0.2.7".parse().unwrap()),
            ended: CancellationToken::new(),
            sessions: TaskTracker::new(),
        };
        assert!(t.forward_allowed("192.0.2.7", 5900));
        assert!(t.forward_allowed("localhost", 5900));
        assert!(t.forward_allowed("127.0.0.1", 5900));
        assert!(t.forward_allowed("[::1]", 5900));
        assert!(!t.forward_allowed("192.0.2.7", 22));
        assert!(!t.forward_allowed("192.0.2.8", 5900));
        assert!(!t.forward_allowed("example.com", 5900));
    }
}
