// CallService.swift: PushKit, CallKit and the voip-backend WebSocket, in one file an app
// can start from. docs/ios-client.md explains each part; voip/devicesim/ is an executable
// model of the same logic, tested against a real node.
//
// Xcode 16 (Swift 5 language mode), iOS 17+. Every piece of state lives on the main actor: PushKit
// delivers on the main queue (the registry is made with `queue: .main`), CallKit calls
// its delegate on the main queue (`setDelegate(self, queue: nil)`), and the completion
// handlers that may run elsewhere hop back with `Task { @MainActor in ... }`.
//
// Project setup (docs/ios-client.md, "0. Project setup"): Push Notifications capability;
// Background Modes "Voice over IP" and "Audio, AirPlay, and Picture in Picture"; for a
// development `http://` service, an App Transport Security exception.

import AVFoundation
import CallKit
import Foundation
import PushKit
import Security
import UIKit

/// Where the service is, and who this install is. `sessionToken` is the bearer token
/// from the app's login; the name callees see is its claim `name`, set by the app's
/// backend, never sent by the app.
struct ServiceConfig {
    let baseURL: URL             // https://voip.example.com (http:// needs an ATS exception)
    let deviceID: String
    var sessionToken: String
    var alertToken: String?      // the ordinary APNs token, for missed-call alerts

    /// What the app stored: the service's URL from Info.plist (`VoIPServiceURL`), the rest
    /// from the Keychain, readable after the first unlock: a push may launch the app on a
    /// locked phone.
    static func stored() -> ServiceConfig {
        let url = Bundle.main.object(forInfoDictionaryKey: "VoIPServiceURL") as? String
        return ServiceConfig(
            baseURL: URL(string: url ?? "https://voip.example.com")!,
            deviceID: Keychain.string("voip.device-id") ?? Keychain.set("voip.device-id", UUID().uuidString.lowercased()),
            sessionToken: Keychain.string("voip.session-token") ?? "",
            alertToken: nil)
    }
}

enum Keychain {
    static func string(_ service: String) -> String? {
        let query: [String: Any] = [kSecClass as String: kSecClassGenericPassword,
                                    kSecAttrService as String: service, kSecReturnData as String: true]
        var item: CFTypeRef?
        guard SecItemCopyMatching(query as CFDictionary, &item) == errSecSuccess, let data = item as? Data else { return nil }
        return String(data: data, encoding: .utf8)
    }

    @discardableResult
    static func set(_ service: String, _ value: String) -> String {
        let query: [String: Any] = [kSecClass as String: kSecClassGenericPassword, kSecAttrService as String: service]
        SecItemDelete(query as CFDictionary)
        var add = query
        add[kSecValueData as String] = Data(value.utf8)
        add[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        SecItemAdd(add as CFDictionary, nil)
        return value
    }
}

/// The app's audio and video stack (WebRTC or other): started and stopped by CallKit's
/// audio session, fed with the `call.signal` payloads of its call.
@MainActor protocol MediaEngine: AnyObject {
    func start(callID: UUID, audioSession: AVAudioSession)
    func stop(callID: UUID)
    func handle(signal: Any, callID: UUID)
}

/// `GET /v1/ice-servers`: each entry is one RTCIceServer, as WebRTC takes it.
struct IceServer: Decodable {
    let urls: [String]
    let username: String?       // TURN only: "<expiry, unix seconds>:<user id>"
    let credential: String?     // TURN only
}

struct IceServerList: Decodable {
    let ice_servers: [IceServer]
    let ttl: Int                // seconds the TURN credential stays valid
}

/// Stands in for the app's media engine until it has one: no audio.
final class SilentMedia: MediaEngine {
    func start(callID: UUID, audioSession: AVAudioSession) {}
    func stop(callID: UUID) {}
    func handle(signal: Any, callID: UUID) {}
}

/// The service's end reasons (status, frames, pushes) map one to one onto CallKit's.
extension CXCallEndedReason {
    init(serverReason: String?) {
        switch serverReason {
        case "remote_ended": self = .remoteEnded
        case "unanswered": self = .unanswered
        case "answered_elsewhere": self = .answeredElsewhere
        case "declined_elsewhere": self = .declinedElsewhere
        default: self = .failed            // "failed", "unknown_call", anything newer
        }
    }
}

/// A VoIP push from the service, read from `PKPushPayload.dictionaryPayload`.
struct VoIPPush {
    enum Kind {
        case incoming(callerID: String, callerName: String?, statusURL: URL, expiresAt: Date)
        case ended(reason: String?)        // "call.cancelled" and "call.ended" alike
    }
    let callID: UUID
    let kind: Kind

    init?(_ payload: [AnyHashable: Any]) {
        guard let id = (payload["call_id"] as? String).flatMap(UUID.init(uuidString:)) else { return nil }
        callID = id
        switch payload["type"] as? String {
        case "call.incoming":
            guard let caller = payload["caller"] as? [String: Any],
                  let url = (payload["status_url"] as? String).flatMap(URL.init(string:)),
                  let expires = payload["expires_at"] as? Double else { return nil }
            kind = .incoming(callerID: caller["id"] as? String ?? "", callerName: caller["display_name"] as? String,
                             statusURL: url, expiresAt: Date(timeIntervalSince1970: expires / 1000))
        case "call.cancelled", "call.ended":
            kind = .ended(reason: payload["reason"] as? String)
        default:
            return nil
        }
    }
}

/// The status endpoint's answer (`GET status_url`); a 404 `unknown_call` has the same shape.
struct CallStatus: Decodable {
    let state: String?
    let end_call: Bool
    let reason: String?
}

/// One call this app reported to CallKit. Ended calls stay in the table (dedupe on
/// `call_id`: a push can arrive twice, or hours late).
struct CallRecord {
    enum Direction { case incoming, outgoing }
    enum Phase { case ringing, connecting, connected, ended }
    let direction: Direction
    var phase: Phase
    var endedReason: CXCallEndedReason?
    var isActive: Bool { phase != .ended }
}

struct DeviceRegistration: Encodable {
    let voip_token: String?
    let apns_environment: String
    let bundle_id: String
    let alert_token: String?
}

// The aps-environment entitlement decides a token's APNs environment; DEBUG stands in
// for it: Xcode builds get sandbox tokens, TestFlight and App Store builds production.
#if DEBUG
let apnsEnvironment = "sandbox"
#else
let apnsEnvironment = "production"
#endif

@MainActor
final class CallService: NSObject {
    private var config: ServiceConfig
    private let media: MediaEngine
    private let registry: PKPushRegistry
    private let provider: CXProvider
    private let callController = CXCallController()
    private var calls: [UUID: CallRecord] = [:]
    private var voipToken: String?

    // The WebSocket: open while the app is in the foreground or any call is active.
    private var socket: URLSessionWebSocketTask?
    private var inForeground = false
    private var reconnectDelay: TimeInterval = 1
    private var replies: [String: CheckedContinuation<[String: Any], Never>] = [:]
    private var nextRequestID = 0

    /// Call from `application(_:didFinishLaunchingWithOptions:)`, before it returns: a VoIP
    /// push that launched the app is delivered only once a registry exists.
    init(config: ServiceConfig, media: MediaEngine) {
        self.config = config
        self.media = media
        registry = PKPushRegistry(queue: .main)
        let configuration = CXProviderConfiguration()
        configuration.supportsVideo = false
        configuration.maximumCallGroups = 1
        configuration.maximumCallsPerCallGroup = 1
        configuration.supportedHandleTypes = [.generic]
        configuration.includesCallsInRecents = true
        provider = CXProvider(configuration: configuration)
        super.init()
        provider.setDelegate(self, queue: nil)     // nil: the main queue
        registry.delegate = self
        registry.desiredPushTypes = [.voIP]
    }

    /// After the app's login: keep the session, register this device, connect.
    func signedIn(sessionToken: String) {
        config.sessionToken = Keychain.set("voip.session-token", sessionToken)
        Task { await register() }
        if inForeground { connect() }
    }

    // MARK: App lifecycle

    func appDidBecomeActive() {
        inForeground = true
        connect()
    }

    func appDidEnterBackground() {
        inForeground = false
        closeSocketIfIdle()
    }

    /// An app in an active CallKit call keeps running in the background: the socket stays
    /// open for the call's whole life, or the other side's hang-up is never heard.
    private func closeSocketIfIdle() {
        guard !inForeground, !calls.values.contains(where: \.isActive) else { return }
        socket?.cancel(with: .goingAway, reason: nil)
        dropSocket()
    }

    private func dropSocket() {
        socket = nil
        for (_, waiting) in replies { waiting.resume(returning: ["type": "error", "code": "disconnected"]) }
        replies = [:]
    }

    // MARK: Registration

    private func register() async {
        var request = URLRequest(url: config.baseURL.appending(path: "v1/devices/\(config.deviceID)"))
        request.httpMethod = "PUT"
        request.setValue("Bearer \(config.sessionToken)", forHTTPHeaderField: "Authorization")
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try? JSONEncoder().encode(DeviceRegistration(
            voip_token: voipToken, apns_environment: apnsEnvironment,
            bundle_id: Bundle.main.bundleIdentifier ?? "", alert_token: config.alertToken))
        _ = try? await URLSession.shared.data(for: request)   // sent again on the next launch if it failed
    }

    // MARK: Pushes

    private func handle(_ payload: [AnyHashable: Any], mustReport: Bool, completion: @escaping () -> Void) {
        guard let push = VoIPPush(payload) else {
            // A VoIP push all the same: it must produce a reported call.
            return mustReport ? reportAndEnd(UUID(), reason: .failed, completion: completion) : completion()
        }
        switch push.kind {
        case let .incoming(callerID, callerName, statusURL, expiresAt):
            invite(push.callID, callerID: callerID, callerName: callerName, statusURL: statusURL,
                   expiresAt: expiresAt, mustReport: mustReport, completion: completion)
        case let .ended(reason):
            let reason = CXCallEndedReason(serverReason: reason)
            if calls[push.callID]?.isActive == true {
                end(push.callID, reason: reason)
                completion()
            } else if mustReport {
                // Unknown here (the invite was slept through) or already ended: report and
                // end at once, under a fresh UUID if the call is known.
                reportAndEnd(calls[push.callID] == nil ? push.callID : UUID(), reason: reason, completion: completion)
            } else {
                completion()
            }
        }
    }

    private func invite(_ callID: UUID, callerID: String, callerName: String?, statusURL: URL, expiresAt: Date,
                        mustReport: Bool, completion: @escaping () -> Void) {
        if let known = calls[callID] {
            if known.isActive {
                // The same call again: CallKit answers callUUIDAlreadyExists, nothing new rings.
                report(callID, callerID: callerID, callerName: callerName, completion: completion)
            } else if mustReport {
                reportAndEnd(UUID(), reason: known.endedReason ?? .failed, completion: completion)
            } else {
                completion()
            }
            return
        }
        if mustReport {
            // Report first, before the handler returns; nothing may come before it.
            report(callID, callerID: callerID, callerName: callerName, completion: completion)
            ringUntil(callID, expiresAt: expiresAt)
            Task { await checkStatus(callID, url: statusURL, expiresAt: expiresAt, reported: true) }
        } else {
            // iOS 26.4+, and the system does not insist: ask first, report only a live call.
            Task {
                await checkStatus(callID, url: statusURL, expiresAt: expiresAt, reported: false,
                                  callerID: callerID, callerName: callerName)
                completion()
            }
        }
    }

    private func report(_ callID: UUID, callerID: String, callerName: String?, completion: @escaping () -> Void) {
        let update = CXCallUpdate()
        update.remoteHandle = CXHandle(type: .generic, value: callerID)
        update.localizedCallerName = callerName
        update.hasVideo = false
        if calls[callID] == nil { calls[callID] = CallRecord(direction: .incoming, phase: .ringing) }
        provider.reportNewIncomingCall(with: callID, update: update) { error in
            Task { @MainActor in
                let code = (error as? CXErrorCodeIncomingCallError)?.code
                if error != nil, code != .callUUIDAlreadyExists {
                    // Do Not Disturb, a blocked caller, too many calls: not shown, not ringing.
                    self.calls[callID]?.phase = .ended
                }
                completion()
            }
        }
    }

    private func reportAndEnd(_ callID: UUID, reason: CXCallEndedReason, completion: @escaping () -> Void) {
        let update = CXCallUpdate()
        update.remoteHandle = CXHandle(type: .generic, value: "")
        calls[callID] = CallRecord(direction: .incoming, phase: .ended, endedReason: reason)
        provider.reportNewIncomingCall(with: callID, update: update) { _ in
            Task { @MainActor in
                self.provider.reportCall(with: callID, endedAt: nil, reason: reason)
                completion()
            }
        }
    }

    /// The push's `expires_at` ends a call still ringing here, whatever else failed: no
    /// status answer, no socket, no cancellation push.
    private func ringUntil(_ callID: UUID, expiresAt: Date) {
        Task {
            try? await Task.sleep(for: .seconds(max(0, expiresAt.timeIntervalSinceNow)))
            if calls[callID]?.phase == .ringing { end(callID, reason: .unanswered) }
        }
    }

    /// Ask `status_url` until it gives a verdict: again after 1 s, doubling up to 10 s (a
    /// 503's `Retry-After` when longer), never past `expiresAt`. A late push is asked once.
    private func checkStatus(_ callID: UUID, url: URL, expiresAt: Date, reported: Bool,
                             callerID: String = "", callerName: String? = nil) async {
        var wait: TimeInterval = 1
        var answer = await status(url)
        while case .noVerdict(let retryAfter) = answer, Date() < expiresAt {
            if reported, calls[callID]?.isActive != true { return }   // ended meanwhile
            let pause = min(max(wait, retryAfter ?? 0), expiresAt.timeIntervalSinceNow)
            try? await Task.sleep(for: .seconds(max(0, pause)))
            wait = min(wait * 2, 10)
            if Date() < expiresAt { answer = await status(url) }
        }
        guard case .verdict(let status) = answer else {
            end(callID, reason: .unanswered)      // no verdict by the push's own deadline
            return
        }
        if status.end_call {
            end(callID, reason: CXCallEndedReason(serverReason: status.reason))
            return
        }
        if !reported {
            await withCheckedContinuation { done in
                report(callID, callerID: callerID, callerName: callerName) { done.resume() }
            }
            ringUntil(callID, expiresAt: expiresAt)
        }
        guard calls[callID]?.phase == .ringing else { return }
        connect()     // answering and declining go over the WebSocket
        _ = await request(["type": "call.ringing", "call_id": callID.uuidString.lowercased()])
    }

    private enum StatusAnswer { case verdict(CallStatus), noVerdict(retryAfter: TimeInterval?) }

    private func status(_ url: URL) async -> StatusAnswer {
        // 200 and 404 (unknown call) carry a verdict; 503, 401 or no network do not.
        guard let (data, response) = try? await URLSession.shared.data(from: url),
              let http = response as? HTTPURLResponse else { return .noVerdict(retryAfter: nil) }
        if http.statusCode == 503 {
            return .noVerdict(retryAfter: http.value(forHTTPHeaderField: "Retry-After").flatMap { TimeInterval($0) })
        }
        guard let status = try? JSONDecoder().decode(CallStatus.self, from: data) else {
            return .noVerdict(retryAfter: nil)
        }
        return .verdict(status)
    }

    /// The call ended without the user: tell CallKit, once.
    private func end(_ callID: UUID, reason: CXCallEndedReason) {
        guard calls[callID]?.isActive == true else { return }
        calls[callID]?.phase = .ended
        calls[callID]?.endedReason = reason
        provider.reportCall(with: callID, endedAt: nil, reason: reason)
        closeSocketIfIdle()
    }

    // MARK: Outgoing calls

    func startCall(to callee: String) {
        let handle = CXHandle(type: .generic, value: callee)
        callController.request(CXTransaction(action: CXStartCallAction(call: UUID(), handle: handle))) { _ in }
    }

    // MARK: WebSocket

    private func connect() {
        guard socket == nil else { return }
        var components = URLComponents(url: config.baseURL.appending(path: "v1/ws"), resolvingAgainstBaseURL: false)!
        components.scheme = components.scheme == "https" ? "wss" : "ws"
        components.queryItems = [URLQueryItem(name: "device_id", value: config.deviceID)]
        var request = URLRequest(url: components.url!)
        request.setValue("Bearer \(config.sessionToken)", forHTTPHeaderField: "Authorization")
        let task = URLSession.shared.webSocketTask(with: request)
        socket = task
        task.resume()                           // the first frame is {"type": "hello", ...}
        Task { await receive(on: task) }
    }

    private func receive(on task: URLSessionWebSocketTask) async {
        while let message = try? await task.receive() {
            reconnectDelay = 1
            guard case .string(let text) = message,
                  let frame = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else { continue }
            onFrame(frame)
        }
        guard socket === task else { return }   // closed on purpose, or replaced
        dropSocket()
        // 1013 (Redis away) and dropped networks: back off, 1 s doubling to 30 s, with jitter.
        // Whoever needs the socket (the foreground, a call) gets it back.
        guard inForeground || calls.values.contains(where: \.isActive) else { return }
        let delay = reconnectDelay * Double.random(in: 0.5...1)
        reconnectDelay = min(reconnectDelay * 2, 30)
        try? await Task.sleep(for: .seconds(delay))
        if inForeground || calls.values.contains(where: \.isActive) { connect() }
    }

    private func send(_ frame: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: frame),
              let text = String(data: data, encoding: .utf8) else { return }
        socket?.send(.string(text)) { _ in }
    }

    /// Send a request and wait for the reply with its `id`.
    private func request(_ frame: [String: Any]) async -> [String: Any] {
        connect()
        nextRequestID += 1
        let id = "\(config.deviceID)-\(nextRequestID)"
        return await withCheckedContinuation { continuation in
            replies[id] = continuation
            var frame = frame
            frame["id"] = id
            send(frame)
        }
    }

    private func onFrame(_ frame: [String: Any]) {
        if let id = frame["id"] as? String, let waiting = replies.removeValue(forKey: id) {
            waiting.resume(returning: frame)
            return
        }
        let type = frame["type"] as? String ?? ""
        switch type {
        case "hello":
            // (Re)connected: a call that ended while the socket was down, and whose hang-up
            // push did not arrive either, ends now.
            for (id, call) in calls where call.isActive { Task { await resync(id) } }
            return
        case "device.reregister":
            Task { await register() }
            return
        case "reconnect":
            // The node is restarting: the socket closes with 1012 next; connect again at
            // once (0-1 s of jitter), not with the error backoff.
            reconnectDelay = Double.random(in: 0...1)
            return
        default:
            break
        }
        guard let callID = (frame["call_id"] as? String).flatMap(UUID.init(uuidString:)) else { return }
        let call = calls[callID]
        switch type {
        case "call.incoming" where call == nil:
            // In the foreground the frame may beat the push; the push is then a duplicate.
            let callerID = frame["caller"] as? String ?? ""
            report(callID, callerID: callerID, callerName: frame["caller_name"] as? String) {}
            ringUntil(callID, expiresAt: Date(timeIntervalSince1970: (frame["ring_deadline"] as? Double ?? 0) / 1000))
            send(["type": "call.ringing", "call_id": callID.uuidString.lowercased()])
        case "call.answered" where call?.direction == .outgoing:
            calls[callID]?.phase = .connected
            provider.reportOutgoingCall(with: callID, connectedAt: nil)
        case "call.answered_elsewhere":
            end(callID, reason: .answeredElsewhere)
        case "call.declined" where call?.direction == .outgoing:
            end(callID, reason: .remoteEnded)   // to the caller, the other end refused
        case "call.cancelled", "call.declined", "call.missed", "call.failed", "call.ended":
            end(callID, reason: CXCallEndedReason(serverReason: frame["reason"] as? String))
        case "call.signal":
            if let payload = frame["payload"] { media.handle(signal: payload, callID: callID) }
        default:
            break   // call.ringing (play ringback), duplicates, newer frames
        }
    }

    /// The status of a call this device holds, asked with the session's bearer token.
    private func resync(_ callID: UUID) async {
        var components = URLComponents(
            url: config.baseURL.appending(path: "v1/calls/\(callID.uuidString.lowercased())/status"),
            resolvingAgainstBaseURL: false)!
        components.queryItems = [URLQueryItem(name: "device_id", value: config.deviceID)]
        var request = URLRequest(url: components.url!)
        request.setValue("Bearer \(config.sessionToken)", forHTTPHeaderField: "Authorization")
        guard let (data, _) = try? await URLSession.shared.data(for: request),
              let status = try? JSONDecoder().decode(CallStatus.self, from: data), status.end_call else { return }
        end(callID, reason: CXCallEndedReason(serverReason: status.reason))
    }

    // MARK: Media servers

    /// STUN and TURN for one call's media: ask when the call's peer connection is made
    /// (placing a call, answering one) and again for an ICE restart, never from a cache.
    /// coturn checks a TURN credential when the relay is allocated, so one fetched at
    /// launch may have expired by the time of the call; a relay allocated in time lasts
    /// the whole call. nil (no answer): the call tries without, on host candidates only.
    func iceServers() async -> [IceServer]? {
        var request = URLRequest(url: config.baseURL.appending(path: "v1/ice-servers"))
        request.setValue("Bearer \(config.sessionToken)", forHTTPHeaderField: "Authorization")
        guard let (data, response) = try? await URLSession.shared.data(for: request),
              (response as? HTTPURLResponse)?.statusCode == 200,
              let list = try? JSONDecoder().decode(IceServerList.self, from: data) else { return nil }
        // WebRTC's iOS SDK: RTCIceServer(urlStrings: $0.urls, username: $0.username, credential: $0.credential)
        return list.ice_servers
    }

    private func configureAudioSession() {
        // Configure only; CallKit activates the session and says so in didActivate.
        try? AVAudioSession.sharedInstance().setCategory(.playAndRecord, mode: .voiceChat)
    }
}

// MARK: PushKit

extension CallService: @preconcurrency PKPushRegistryDelegate {
    func pushRegistry(_ registry: PKPushRegistry, didUpdate credentials: PKPushCredentials, for type: PKPushType) {
        voipToken = credentials.token.map { String(format: "%02x", $0) }.joined()
        Task { await register() }
    }

    func pushRegistry(_ registry: PKPushRegistry, didInvalidatePushTokenFor type: PKPushType) {
        voipToken = nil
        Task { await register() }
    }

    func pushRegistry(_ registry: PKPushRegistry, didReceiveIncomingPushWith payload: PKPushPayload,
                      for type: PKPushType, completion: @escaping () -> Void) {
        handle(payload.dictionaryPayload, mustReport: true, completion: completion)
    }

    @available(iOS 26.4, *)
    func pushRegistry(_ registry: PKPushRegistry, didReceiveIncomingVoIPPushWith payload: PKPushPayload,
                      metadata: PKVoIPPushMetadata, withCompletionHandler completion: @escaping () -> Void) {
        handle(payload.dictionaryPayload, mustReport: metadata.mustReport, completion: completion)
    }
}

// MARK: CallKit

extension CallService: @preconcurrency CXProviderDelegate {
    func provider(_ provider: CXProvider, perform action: CXStartCallAction) {
        calls[action.callUUID] = CallRecord(direction: .outgoing, phase: .connecting)
        configureAudioSession()
        Task {
            let reply = await request(["type": "call.start", "callee": action.handle.value,
                                       "call_id": action.callUUID.uuidString.lowercased()])
            if reply["type"] as? String == "call.started" {
                provider.reportOutgoingCall(with: action.callUUID, startedConnectingAt: nil)
                action.fulfill()
            } else {
                calls[action.callUUID]?.phase = .ended
                action.fail()
            }
        }
    }

    func provider(_ provider: CXProvider, perform action: CXAnswerCallAction) {
        configureAudioSession()
        Task {
            // The first answer wins; a device that lost the race gets an error (invalid_state).
            let reply = await request(["type": "call.answer", "call_id": action.callUUID.uuidString.lowercased()])
            if reply["type"] as? String == "ack", calls[action.callUUID]?.isActive == true {
                calls[action.callUUID]?.phase = .connected
                action.fulfill()                 // CallKit then activates audio: didActivate
            } else {
                calls[action.callUUID]?.phase = .ended
                action.fail()
            }
        }
    }

    func provider(_ provider: CXProvider, perform action: CXEndCallAction) {
        let ringingHere = calls[action.callUUID].map { $0.direction == .incoming && $0.phase == .ringing } ?? false
        calls[action.callUUID]?.phase = .ended
        action.fulfill()     // ending is never refused: the user is done with this call
        Task {
            // The reply, then the close: the frame must leave before the socket does.
            _ = await request(["type": ringingHere ? "call.decline" : "call.hangup",
                               "call_id": action.callUUID.uuidString.lowercased()])
            closeSocketIfIdle()
        }
    }

    func provider(_ provider: CXProvider, didActivate audioSession: AVAudioSession) {
        // Audio starts here, for both directions: not on call.answered, not on the answer action.
        for (id, call) in calls where call.isActive { media.start(callID: id, audioSession: audioSession) }
    }

    func provider(_ provider: CXProvider, didDeactivate audioSession: AVAudioSession) {
        for id in calls.keys { media.stop(callID: id) }
    }

    func providerDidReset(_ provider: CXProvider) {
        let active = calls.filter { $0.value.isActive }.map(\.key)
        for id in active {
            calls[id]?.phase = .ended
            media.stop(callID: id)
        }
        Task {
            for id in active { _ = await request(["type": "call.hangup", "call_id": id.uuidString.lowercased()]) }
            closeSocketIfIdle()
        }
    }
}

// MARK: Launch

/// Creates the service at launch: a push that launched the app is handed to the
/// registry the service makes here. (SwiftUI: `@UIApplicationDelegateAdaptor`.)
final class AppDelegate: UIResponder, UIApplicationDelegate {
    var callService: CallService?

    func application(_ application: UIApplication,
                     didFinishLaunchingWithOptions launchOptions: [UIApplication.LaunchOptionsKey: Any]?) -> Bool {
        callService = CallService(config: ServiceConfig.stored(), media: SilentMedia())
        NotificationCenter.default.addObserver(forName: UIApplication.didBecomeActiveNotification, object: nil,
                                               queue: .main) { _ in
            MainActor.assumeIsolated { self.callService?.appDidBecomeActive() }
        }
        NotificationCenter.default.addObserver(forName: UIApplication.didEnterBackgroundNotification, object: nil,
                                               queue: .main) { _ in
            MainActor.assumeIsolated { self.callService?.appDidEnterBackground() }
        }
        return true
    }
}
