//! The generated code names only fully qualified paths, so it compiles in a module without
//! the prelude.

mod store {
    #![no_implicit_prelude]

    /// A key-value store.
    #[::rpc_core::service]
    pub trait Store {
        /// Stores `value` under `key`.
        async fn put(
            &self,
            key: ::std::string::String,
            value: ::std::vec::Vec<u8>,
        ) -> ::core::result::Result<(), ::std::string::String>;
        /// Reads the value under `key`.
        async fn get(
            &self,
            key: ::std::string::String,
        ) -> ::core::option::Option<::std::vec::Vec<u8>>;
        /// How many keys are stored.
        async fn len(&self) -> u64;
        /// Compiled out: its types need not even exist.
        #[cfg(any())]
        async fn gone(&self, x: NoSuchType) -> AlsoMissing;
    }

    /// An implementation that stores nothing.
    pub struct Nothing;

    impl Store for Nothing {
        async fn put(
            &self,
            _key: ::std::string::String,
            _value: ::std::vec::Vec<u8>,
        ) -> ::core::result::Result<(), ::std::string::String> {
            ::core::result::Result::Ok(())
        }
        async fn get(
            &self,
            _key: ::std::string::String,
        ) -> ::core::option::Option<::std::vec::Vec<u8>> {
            ::core::option::Option::None
        }
        async fn len(&self) -> u64 {
            0
        }
    }
}

fn assert_service<S: rpc_core::Service>(_: S) {}

fn main() {
    assert_service(store::StoreServer::new(store::Nothing));
    let _: fn(rpc_core::Client) -> store::StoreClient = store::StoreClient::from_client;
    let _: rpc_core::ServiceDescriptor = store::StoreServer::<store::Nothing>::DESCRIPTOR;
}
