use rpc_core::service;

pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[service]
pub trait Geometry {
    async fn translate(&self, distance: f64, point: Point) -> f64;
}

fn main() {}
